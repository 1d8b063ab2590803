"""benchmarks.run's scale figures: N attaches at once through the command line (N
processes, one guest each) against the floor at the same parallelism (N threads of one
warm process, each with its own libvirt connection), for each N; the order of the two
alternates between repetitions. Between repetitions the guests (no OS, which never
releases a hot-plugged disk) are stopped, every volume detached from their persistent
definitions (attachflow's by `attachflow detach`, the floor's by its own calls) and the
guests started again; none of that is timed.
"""

from __future__ import annotations

import concurrent.futures
import time

from benchmarks.common import af, cli, median_phases, ratio, run, stats, summary
from benchmarks.floor import Floor
from benchmarks.labkit import Lab

HOST = "hosta"
FLOOR_DEVICE = "vdz"  # out of the way of attachflow's next free vdX
TARGET_AT_16 = 1.2


class Scale:
    def __init__(self, lab: Lab, widest: int):
        import attachflow
        self.lab = lab
        self.guests = [g.name for g in lab.boot_many(widest, HOST, 64)]
        self.af_vols = lab.new_volumes(widest, "bench-scale")
        self.floor_vols = lab.new_volumes(widest, "bench-scale-floor")
        with attachflow.Client(transport="native") as client:
            connector = client.connector(HOST).to_dict()
        # one libvirt connection per worker, opened ahead: one shared connection would
        # queue behind libvirtd's per-client request limit
        self.floors = [Floor(lab.cinder, lab.conn(HOST, fresh=True), connector)
                       for _ in range(widest)]

    def floor_round(self, n: int) -> tuple[float, list[float], list]:
        def one(i: int):
            start = time.perf_counter()
            fa = self.floors[i].attach(self.floor_vols[i], self.guests[i], FLOOR_DEVICE)
            return time.perf_counter() - start, fa

        return self._at_once(n, one)

    def cli_round(self, n: int) -> tuple[float, list[float], list]:
        def one(i: int):
            wall, found, _out = cli(["attach", self.af_vols[i], self.guests[i], "--host",
                                     HOST])
            return wall, found

        return self._at_once(n, one)

    @staticmethod
    def _at_once(n: int, one) -> tuple[float, list[float], list]:
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            done = list(pool.map(one, range(n)))
        return time.perf_counter() - start, [d[0] for d in done], [d[1] for d in done]

    def release(self, n: int, floor_attachments: list) -> None:
        guests = self.guests[:n]
        self.lab.stop(HOST, guests)
        with concurrent.futures.ThreadPoolExecutor(min(n, 8)) as pool:
            list(pool.map(lambda i: run(af("detach", self.af_vols[i], self.guests[i],
                                           "--host", HOST)), range(n)))
        for i, fa in enumerate(floor_attachments):
            self.floors[i].release(fa)
        self.lab.start(HOST, guests)

    def width(self, n: int, reps: int) -> dict:
        walls: dict[str, list[float]] = {"floor": [], "attachflow": []}
        lat: dict[str, list[float]] = {"floor": [], "attachflow": []}
        found: list[dict] = []
        for rep in range(reps):
            order = ("floor", "attachflow") if rep % 2 == 0 else ("attachflow", "floor")
            for who in order:
                wall, latencies, extra = (self.floor_round(n) if who == "floor"
                                          else self.cli_round(n))
                walls[who].append(wall)
                lat[who] += latencies
                if who == "floor":
                    floor_attachments = extra
                else:
                    found += extra
            self.release(n, floor_attachments)
            print(f"  {n} attaches at once, rep {rep + 1}: floor {walls['floor'][-1]:.2f} s, "
                  f"attachflow {walls['attachflow'][-1]:.2f} s", flush=True)
        return width_result(n, walls, lat, found)


def width_result(n: int, walls: dict, lat: dict, found: list[dict]) -> dict:
    out: dict = {"parallel": n}
    for who in ("floor", "attachflow"):
        out[who] = {"wall_s": stats(walls[who]), "latency": summary(lat[who]),
                    "throughput_per_s": n / summary(walls[who])["median"]}
    out["ratio"] = ratio(out["attachflow"]["wall_s"], out["floor"]["wall_s"])
    out["p95_ratio"] = (out["attachflow"]["latency"]["p95"]
                        / out["floor"]["latency"]["p95"])
    out["attachflow"]["phases"] = median_phases(found)
    return out


def scale(lab: Lab, widths: tuple[int, ...], reps: int) -> dict:
    bench = Scale(lab, max(widths))
    out = {f"parallel_{n}": bench.width(n, reps) for n in widths}
    out["widths"] = list(widths)
    out["target_ratio_at_16"] = TARGET_AT_16
    for conn in (f.conn for f in bench.floors):
        conn.close()
    return out
