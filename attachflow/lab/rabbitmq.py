"""RabbitMQ, Cinder's message bus: a private node on 127.0.0.1:5682.

Side effects owned: the broker (and the epmd it spawns) and its files in the state dir.
"""

from __future__ import annotations

import contextlib
import socket

from attachflow.lab import layout
from attachflow.lab.component import Component, Lab, Status
from attachflow.lab.errors import LabError
from attachflow.lab.shell import port_open
from attachflow.lab.supervision import Program


def _env() -> dict[str, str]:
    base = layout.path("rabbitmq")
    return {
        "HOME": str(base),  # the Erlang cookie lives in $HOME
        "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
        # epmd is started by the broker, not from its env file.
        "ERL_EPMD_PORT": str(layout.EPMD_PORT),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
    }


def amqp_answers() -> bool:
    # The listener accepts TCP before the broker boots fully; a protocol header answered
    # with Connection.Start means it is really serving.
    with contextlib.closing(socket.create_connection(("127.0.0.1", layout.RABBIT_PORT),
                                                     1)) as s:
        s.settimeout(2)
        s.sendall(b"AMQP\x00\x00\x09\x01")
        head = s.recv(7)
        return len(head) == 7 and head[0] == 1


class RabbitMQ(Component):
    name = "rabbitmq"
    apt_packages = ("rabbitmq-server",)

    def programs(self) -> list[Program]:
        return [Program("rabbitmq", ["/usr/lib/rabbitmq/bin/rabbitmq-server"],
                        group=self.name, env=_env(), directory=str(layout.path("rabbitmq")),
                        stop_wait=20)]

    def up(self, lab: Lab) -> None:
        base = layout.path("rabbitmq")
        values = dict(node=layout.RABBIT_NODE, dist_port=str(layout.RABBIT_DIST_PORT),
                      log_dir=str(layout.path("log", "rabbitmq")))
        for name in ("rabbitmq.conf", "advanced.config", "enabled_plugins",
                     "rabbitmq-env.conf"):
            layout.render(f"rabbitmq/{name}", base / name, 0o600, **values)
        if not lab.program_pids(["rabbitmq"]) and port_open("127.0.0.1", layout.RABBIT_PORT):
            raise LabError(f"port 127.0.0.1:{layout.RABBIT_PORT} is taken by a process not "
                           "started by the lab")
        super().up(lab)

    def ready(self, lab: Lab) -> bool:
        return amqp_answers()

    def status(self, lab: Lab) -> Status:
        st = super().status(lab)
        st.address = f"127.0.0.1:{layout.RABBIT_PORT}"
        st.details.update(node=layout.RABBIT_NODE,
                          endpoint=f"amqp://127.0.0.1:{layout.RABBIT_PORT}/")
        return st
