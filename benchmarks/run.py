"""attachflow's benchmarks on the local lab, each against its baseline in the same run.

    python3 -m benchmarks.run [--reps N] [--out DIR]

1. attach + detach latency: a floor script that makes only the necessary calls
   (attachment create with connector, libvirt secret, attachDeviceFlags, complete; and
   the reverse) in one warm process, against attachflow as a library (warm) and as a CLI
2. storage API calls per operation, counted at the HTTP session, next to Nova's
3. live migration: `attachflow migrate` against a raw `virsh migrate --live --p2p
   --persistent --undefinesource` of a guest of the same memory size, 64 and 512 MiB
4. scale: 1, 4 and 16 attaches in parallel; 4 guests migrated one after another and
   concurrently
5. `attachflow --help` cold start against `python3 -c pass`, and the orchestrator's peak
   RSS during the migrations of 3.

Each figure is the median over repeated runs with its spread (min, max); the runs of a
figure and its baseline are interleaved. Results go to DIR/results.json and DIR/results.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

NOVA_CALLS_PER_ATTACH = 4  # reserve, get, update, complete (REFERENCE-FLOWS)


def summary(samples: list[float]) -> dict:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, max(0, int(round(0.95 * len(ordered))) - 1))]
    return {"median": statistics.median(ordered), "min": ordered[0], "max": ordered[-1],
            "p95": p95, "n": len(ordered)}


def run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} exited {proc.returncode}: "
                           f"{proc.stderr.strip()[-400:]}")
    return proc


def run_measured(argv: list[str]) -> tuple[float, str, float]:
    """Wall time, stdout and peak RSS (MiB) of one command, reaped with wait4 so that
    the RSS is that command's own."""
    import tempfile
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err)
        _pid, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(f"{shlex.join(argv)} exited {proc.returncode}: "
                               f"{err.read()[-400:]}")
        return seconds, out.read(), usage.ru_maxrss / 1024


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class Bench:
    def __init__(self, reps: int):
        import attachflow.lab as manager
        self.reps = reps
        self.manager = manager
        manager.up(echo=lambda line: print(f"  lab: {line}", flush=True))
        for line in manager.env_lines():
            name, _, value = line.removeprefix("export ").partition("=")
            os.environ[name] = shlex.split(value)[0] if value else ""
        os.environ["ATTACHFLOW_TRANSPORT"] = "native"
        from cinderclient import client
        from attachflow.identity import make_session
        self.session, _ = make_session()
        self.cinder = client.Client("3.71", session=self.session)
        self.calls: list[str] = []
        self.volumes: list[str] = []
        self.domains: list[tuple[str, str]] = []
        self._conns = {}

    def count_calls(self, session) -> None:
        """Count every HTTP request ``session`` sends to the storage API."""
        original = session.request

        def counting(url, method, *args, **kwargs):
            self.calls.append(f"{method} {url}")
            return original(url, method, *args, **kwargs)

        session.request = counting

    # -- lab helpers ------------------------------------------------------------------------
    def uri(self, host):
        from attachflow.hosts import load_host
        return load_host(host).libvirt_uri

    def conn(self, host):
        if host not in self._conns:
            from attachflow.compute_side import _libvirt
            self._conns[host] = _libvirt().open(self.uri(host))
        return self._conns[host]

    def volume(self) -> str:
        vol = self.cinder.volumes.create(1, name="bench")
        self.volumes.append(vol.id)
        for _ in range(300):
            if self.cinder.volumes.get(vol.id).status == "available":
                return vol.id
            time.sleep(0.1)
        raise RuntimeError(f"volume {vol.id} did not become available")

    def boot(self, host: str, memory: int, with_os: bool) -> tuple[str, str]:
        name = f"bench-{uuid.uuid4().hex[:6]}"
        root = self.volume()
        env = dict(os.environ)
        if not with_os:
            for key in ("ATTACHFLOW_BOOT_KERNEL", "ATTACHFLOW_BOOT_INITRD",
                        "ATTACHFLOW_BOOT_CMDLINE"):
                env.pop(key, None)
        run(["attachflow", "boot", name, "--volume", root, "--host", host, "--memory",
             str(memory), *([] if with_os else ["--no-kernel"])], env=env)
        self.domains += [("hosta", name), ("hostb", name)]
        if with_os:
            from attachflow.lab.guest import READY_MARKER
            log = self.manager.state_dir() / "hosts" / host / "var-log-libvirt" / "qemu" / \
                f"{name}-console.log"
            for _ in range(600):
                if log.exists() and READY_MARKER in log.read_text(errors="replace"):
                    break
                time.sleep(0.5)
            else:
                raise RuntimeError(f"guest {name} did not boot")
        return name, root

    def cleanup(self) -> None:
        import libvirt
        for host, name in self.domains:
            try:
                dom = self.conn(host).lookupByName(name)
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
            except libvirt.libvirtError:
                pass
        for host in ("hosta", "hostb"):
            for secret in self.conn(host).listAllSecrets():
                if any(v in (secret.usageID() or "") for v in self.volumes):
                    secret.undefine()
        for vol in self.volumes:
            try:
                for att in self.cinder.volumes.get(vol).attachments:
                    self.cinder.attachments.delete(att["attachment_id"])
                self.cinder.volumes.delete(vol)
            except Exception as exc:
                print(f"  cleanup of {vol}: {exc}")

    # -- 1 and 2: attach + detach ----------------------------------------------------------
    def attach_detach(self) -> dict:
        from attachflow import operations
        from attachflow.cinder_side import CinderStorage
        from attachflow.compute_side import open_host
        from attachflow.connectors import get_transport
        dom, _root = self.boot("hosta", 128, with_os=True)
        data = self.volume()
        storage = CinderStorage.connect()
        self.count_calls(storage._client.client.session)
        host = open_host("hosta")
        transport = get_transport("native")
        floor = Floor(self.cinder, self.conn("hosta"), dom, host)
        results = {"floor": [], "library": [], "cli": []}
        counts = {}
        for i in range(self.reps):
            results["floor"].append(timed(lambda: floor.attach_detach(data)))

            self.calls.clear()
            start = time.perf_counter()
            operations.attach(storage, host, transport, data, dom)
            counts["attach"] = len(self.calls)
            self.calls.clear()
            operations.detach(storage, host, data, dom)
            counts["detach"] = len(self.calls)
            results["library"].append(time.perf_counter() - start)
            results["cli"].append(timed(lambda: (
                run(["attachflow", "attach", data, dom, "--host", "hosta"]),
                run(["attachflow", "detach", data, dom, "--host", "hosta"]))))
            print(f"  attach+detach rep {i + 1}: floor {results['floor'][-1]:.3f} s, "
                  f"library {results['library'][-1]:.3f} s, cli {results['cli'][-1]:.3f} s",
                  flush=True)
        host.close()
        out = {k: summary(v) for k, v in results.items()}
        out["library_over_floor"] = out["library"]["median"] / out["floor"]["median"]
        out["cli_minus_library_s"] = out["cli"]["median"] - out["library"]["median"]
        out["storage_calls"] = {"attach": counts["attach"], "detach": counts["detach"],
                                "nova_attach": NOVA_CALLS_PER_ATTACH}
        return out

    # -- 3: live migration --------------------------------------------------------------------
    def migration(self, memory: int) -> dict:
        import libvirt
        af, _ = self.boot("hosta", memory, with_os=False)
        raw, raw_root = self.boot("hosta", memory, with_os=False)
        self._secret_everywhere(raw, raw_root)
        results = {"attachflow": [], "raw": [], "attachflow_downtime_ms": [],
                   "raw_downtime_ms": [], "attachflow_peak_rss_mib": []}
        where = {af: "hosta", raw: "hosta"}
        for i in range(self.reps):
            for name, kind in ((raw, "raw"), (af, "attachflow")):
                src = where[name]
                dst = "hostb" if src == "hosta" else "hosta"
                if kind == "raw":
                    argv = ["virsh", "-c", self.uri(src), "migrate", "--live", "--p2p",
                            "--persistent", "--undefinesource", name, self.uri(dst)]
                else:
                    argv = ["attachflow", "migrate", name, "--host", src, "--to", dst,
                            "-f", "json"]
                seconds, output, rss = run_measured(argv)
                where[name] = dst
                if kind == "raw":
                    stats = self.conn(dst).lookupByName(name).jobStats(
                        libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
                    downtime = float(stats.get("downtime", 0))
                else:
                    result = json.loads(output)
                    downtime = float(result["downtime_ms"] or 0)
                    results["attachflow_peak_rss_mib"].append(rss)
                results[kind].append(seconds)
                results[f"{kind}_downtime_ms"].append(downtime)
            print(f"  migration {memory} MiB rep {i + 1}: raw {results['raw'][-1]:.2f} s "
                  f"({results['raw_downtime_ms'][-1]:.0f} ms down), attachflow "
                  f"{results['attachflow'][-1]:.2f} s "
                  f"({results['attachflow_downtime_ms'][-1]:.0f} ms down)", flush=True)
        out = {k: summary(v) for k, v in results.items()}
        out["total_ratio"] = out["attachflow"]["median"] / out["raw"]["median"]
        out["downtime_ratio"] = (out["attachflow_downtime_ms"]["median"]
                                 / max(1.0, out["raw_downtime_ms"]["median"]))
        return out

    def _secret_everywhere(self, name: str, volume: str) -> None:
        """The raw baseline moves the guest with its XML unchanged: the destination needs
        the same libvirt secret, defined ahead (not timed)."""
        import libvirt
        from attachflow import domxml
        disk = domxml.find_disk(self.conn("hosta").lookupByName(name).XMLDesc(0), volume)
        att = self.cinder.volumes.get(volume).attachments[0]["attachment_id"]
        password = self.cinder.attachments.show(att).connection_info["auth_password"]
        conn = self.conn("hostb")
        try:
            conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_ISCSI,
                                     disk.source.secret_usage).undefine()
        except libvirt.libvirtError:
            pass
        secret = conn.secretDefineXML(domxml.secret_xml(disk.source.secret_usage, "bench"))
        secret.setValue(password.encode())

    def storage_calls_migrate(self) -> dict:
        """Storage calls of one migration per migrated volume, counted in-process."""
        from attachflow import migrate as mig
        from attachflow.cinder_side import CinderStorage
        from attachflow.compute_side import open_host
        name, _root = self.boot("hosta", 64, with_os=False)
        storage = CinderStorage.connect()
        self.count_calls(storage._client.client.session)
        a, b = open_host("hosta"), open_host("hostb")
        plan = mig.preflight(storage, a, b, name)
        self.calls.clear()
        mig.migrate(storage, plan)
        calls = len(self.calls)
        a.close()
        b.close()
        return {"per_volume": calls / len(plan.volumes), "volumes": len(plan.volumes),
                "calls": list(self.calls)}

    # -- 4: scale -------------------------------------------------------------------------------
    def scale(self) -> dict:
        out = {}
        guests = [self.boot("hosta", 64, with_os=False)[0] for _ in range(16)]
        for n in (1, 4, 16):
            vols = [self.volume() for _ in range(n)]
            latencies: list[float] = []

            def one(pair):
                vol, dom = pair
                return timed(lambda: run(["attachflow", "attach", vol, dom, "--host",
                                          "hosta"]))

            start = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(n) as pool:
                latencies = list(pool.map(one, zip(vols, guests)))
            wall = time.perf_counter() - start
            out[f"parallel_{n}"] = {"throughput_per_s": n / wall, "wall_s": wall,
                                    "latency": summary(latencies)}
            print(f"  {n} parallel attaches: {n / wall:.2f}/s, p95 "
                  f"{out[f'parallel_{n}']['latency']['p95']:.2f} s", flush=True)
            self._release_all(vols, guests[:n])
        movers = [self.boot("hosta", 64, with_os=False)[0] for _ in range(4)]
        seq = timed(lambda: [run(["attachflow", "migrate", m, "--host", "hosta", "--to",
                                  "hostb"]) for m in movers])
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            conc = timed(lambda: list(pool.map(lambda m: run(
                ["attachflow", "migrate", m, "--host", "hostb", "--to", "hosta"]), movers)))
        out["migrate_4"] = {"sequential_s": seq, "concurrent_s": conc,
                            "speedup": seq / conc}
        print(f"  4 migrations: sequential {seq:.1f} s, concurrent {conc:.1f} s", flush=True)
        return out

    def _release_all(self, vols, guests):
        """Take the volumes back without a guest OS to eject them: a guest with no OS
        never releases a hot-plugged disk, so this restarts the guests instead."""
        import libvirt
        for dom in guests:
            d = self.conn("hosta").lookupByName(dom)
            for vol in vols:
                xml = d.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
                from attachflow import domxml
                disk = domxml.find_disk(xml, vol)
                if disk:
                    d.detachDeviceFlags(disk.xml, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
            d.destroy()
            d.create()
        for secret in self.conn("hosta").listAllSecrets():
            if any(v in (secret.usageID() or "") for v in vols):
                secret.undefine()
        for vol in vols:
            for att in self.cinder.volumes.get(vol).attachments:
                self.cinder.attachments.delete(att["attachment_id"])

    # -- 5: start-up and memory -------------------------------------------------------------
    def startup(self) -> dict:
        base, af = [], []
        for _ in range(max(10, self.reps * 2)):
            base.append(timed(lambda: run([sys.executable, "-c", "pass"])))
            af.append(timed(lambda: run(["attachflow", "--help"])))
        out = {"python_c_pass": summary(base), "attachflow_help": summary(af)}
        out["help_minus_python_s"] = out["attachflow_help"]["median"] - \
            out["python_c_pass"]["median"]
        return out


class Floor:
    """Only the calls an attach and a detach need, made directly with python-cinderclient
    and libvirt-python in one warm process: the floor attachflow is measured against."""

    def __init__(self, cinder, conn, dom_name: str, host):
        import libvirt
        self.libvirt = libvirt
        self.cinder = cinder
        self.conn = conn
        self.dom = conn.lookupByName(dom_name)
        self.uuid = self.dom.UUIDString()
        from attachflow.connectors.iscsi_native import initiator_name
        self.connector = {"host": host.cfg.connector_host, "ip": host.cfg.address,
                          "initiator": initiator_name(host), "multipath": False,
                          "platform": "x86_64", "os_type": "linux"}
        self.removed = threading.Event()
        conn.domainEventRegisterAny(self.dom, libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED,
                                    lambda *_a: self.removed.set(), None)

    def attach_detach(self, volume_id: str) -> None:
        lv = self.libvirt
        att = self.cinder.attachments.create(volume_id, self.connector, self.uuid)
        ci = att["connection_info"]
        usage = f"floor/{volume_id}"
        secret = self.conn.secretDefineXML(
            f"<secret ephemeral='no' private='yes'><usage type='iscsi'><target>{usage}"
            "</target></usage></secret>")
        secret.setValue(ci["auth_password"].encode())
        host, port = ci["target_portal"].rsplit(":", 1)
        xml = (f"<disk type='network' device='disk'><driver name='qemu' type='raw' "
               f"cache='none'/><source protocol='iscsi' name='{ci['target_iqn']}/"
               f"{ci['target_lun']}'><host name='{host}' port='{port}'/>"
               f"<auth username='{ci['auth_username']}'><secret type='iscsi' "
               f"usage='{usage}'/></auth></source><target dev='vdc' bus='virtio'/>"
               f"<serial>{volume_id}</serial></disk>")
        both = lv.VIR_DOMAIN_AFFECT_LIVE | lv.VIR_DOMAIN_AFFECT_CONFIG
        self.dom.attachDeviceFlags(xml, both)
        self.cinder.attachments.complete(att["id"])
        self.removed.clear()
        self.dom.detachDeviceFlags(xml, lv.VIR_DOMAIN_AFFECT_CONFIG)
        self.dom.detachDeviceFlags(xml, lv.VIR_DOMAIN_AFFECT_LIVE)
        while f"<serial>{volume_id}</serial>" in self.dom.XMLDesc(0):
            self.removed.wait(0.05)
        secret.undefine()
        self.cinder.attachments.delete(att["id"])


def machine() -> dict:
    def first(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True).stdout.splitlines()[0]
        except Exception:
            return "?"
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    return {"cpus": os.cpu_count(), "cpu": cpu, "memory_gib": round(int(mem) / 2**20, 1),
            "kernel": platform.release(), "python": platform.python_version(),
            "libvirt": first(["libvirtd", "--version"]),
            "qemu": first(["qemu-system-x86_64", "--version"]),
            "accel": "TCG (software emulation)"}


def markdown(res: dict) -> str:
    m = res["machine"]
    ad, st = res["attach_detach"], res["startup"]
    lines = [
        "# attachflow benchmarks", "",
        f"Machine: {m['cpus']} CPUs ({m['cpu']}), {m['memory_gib']} GiB, kernel "
        f"{m['kernel']}, Python {m['python']}, {m['libvirt']}, {m['qemu']}, guests under "
        f"{m['accel']}. Lab: real Cinder, tgtd, libvirtd over qemu+ssh, QEMU's own iSCSI "
        f"initiator with CHAP. {res['reps']} repetitions; median (min - max).", "",
        "| figure | attachflow | baseline | ratio / difference | target |",
        "|---|---|---|---|---|",
    ]

    def f(s, unit="s", scale=1.0, digits=3):
        return (f"{s['median'] * scale:.{digits}f} {unit} ({s['min'] * scale:.{digits}f} - "
                f"{s['max'] * scale:.{digits}f})")

    lines.append(f"| attach + detach, library | {f(ad['library'])} | floor {f(ad['floor'])} "
                 f"| {ad['library_over_floor']:.2f}x | <= 1.10x |")
    lines.append(f"| attach + detach, CLI | {f(ad['cli'])} | library {f(ad['library'])} | "
                 f"+{ad['cli_minus_library_s']:.3f} s | <= +0.3 s |")
    sc = ad["storage_calls"]
    lines.append(f"| storage calls per attach | {sc['attach']} | Nova {sc['nova_attach']} | "
                 f"| 2 |")
    lines.append(f"| storage calls per detach | {sc['detach']} | | | |")
    lines.append(f"| storage calls per migrated volume | {res['migrate_calls']['per_volume']:g}"
                 f" | | | 3 |")
    for size, mg in res["migration"].items():
        lines.append(f"| live migration {size} MiB, total | {f(mg['attachflow'], digits=2)} | "
                     f"virsh {f(mg['raw'], digits=2)} | {mg['total_ratio']:.2f}x | <= 1.15x |")
        lines.append(f"| live migration {size} MiB, downtime | "
                     f"{f(mg['attachflow_downtime_ms'], 'ms', digits=0)} | virsh "
                     f"{f(mg['raw_downtime_ms'], 'ms', digits=0)} | "
                     f"{mg['downtime_ratio']:.2f}x | no worse |")
    sc4 = res["scale"]
    for n in (1, 4, 16):
        p = sc4[f"parallel_{n}"]
        lines.append(f"| {n} attaches in parallel | {p['throughput_per_s']:.2f} /s, p95 "
                     f"{p['latency']['p95']:.2f} s | | | |")
    mg4 = sc4["migrate_4"]
    lines.append(f"| 4 migrations | concurrent {mg4['concurrent_s']:.1f} s | sequential "
                 f"{mg4['sequential_s']:.1f} s | {mg4['speedup']:.2f}x faster | |")
    lines.append(f"| `attachflow --help` | {f(st['attachflow_help'])} | `python3 -c pass` "
                 f"{f(st['python_c_pass'])} | +{st['help_minus_python_s']:.3f} s | <= 0.2 s |")
    rss = res["migration"]["512"]["attachflow_peak_rss_mib"]
    lines.append(f"| orchestrator peak RSS, migration of a 512 MiB guest | "
                 f"{f(rss, 'MiB', digits=0)} | | | <= 100 MB |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("benchmarks: the lab needs root", file=sys.stderr)
        return 2
    bench = Bench(args.reps)
    res = {"reps": args.reps, "machine": machine(),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    try:
        print("startup", flush=True)
        res["startup"] = bench.startup()
        print("attach + detach", flush=True)
        res["attach_detach"] = bench.attach_detach()
        print("storage calls per migrated volume", flush=True)
        res["migrate_calls"] = bench.storage_calls_migrate()
        res["migration"] = {}
        for memory in (64, 512):
            print(f"live migration, {memory} MiB", flush=True)
            res["migration"][str(memory)] = bench.migration(memory)
        print("scale", flush=True)
        res["scale"] = bench.scale()
    finally:
        bench.cleanup()
    write_results(Path(args.out), "results", res, markdown(res))
    return 0


def write_results(out: Path, name: str, res: dict, md: str) -> None:
    """DIR/NAME.json and DIR/NAME.md, and the table on stdout."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(res, indent=2, sort_keys=True) + "\n")
    (out / f"{name}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    sys.exit(main())
