"""The CLI's process supervision: the temporary Prefect API server it starts for a run."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from conftest import user_env

# Another process's server already answers /api/health on the port drawn first: the run must
# not take that answer for its own server's (the CI failure of stop 30, where two runs drew
# the same port from Prefect's 8000-8999 and one ran against the other's server until its
# own failed to bind).
_SCRIPT = textwrap.dedent(
    """
    import http.server, json, socket, threading
    import psutil
    from auditflow import supervise
    supervise.prefect_env()

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers(); self.wfile.write(b"true")
        def log_message(self, *args):
            pass

    foreign = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=foreign.serve_forever, daemon=True).start()
    taken = foreign.server_address[1]
    drawn = [taken]
    real = supervise._kernel_port
    supervise._kernel_port = lambda: drawn.pop() if drawn else real()

    process = supervise._start_temporary_api()
    from prefect.server.api.server import SubprocessASGIServer
    server = SubprocessASGIServer()  # the instance Prefect's own calls get
    listening = [c.laddr.port for c in psutil.Process(process.pid).net_connections(kind="tcp")
                 if c.status == psutil.CONN_LISTEN]
    print(json.dumps({"taken": taken, "port": server.port, "same": server.server_process is process,
                      "listening": listening, "alive": process.poll() is None}))
    process.terminate(); process.wait()
    """
)


@pytest.mark.slow
def test_the_temporary_server_gets_a_port_of_its_own_when_another_answers_on_the_first(tmp_path):
    env = user_env(PREFECT_HOME=str(tmp_path / "prefect"))
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    assert facts["alive"] and facts["same"]
    assert facts["port"] != facts["taken"]
    assert facts["listening"] == [facts["port"]], facts
    assert "answered for another process" in done.stderr
