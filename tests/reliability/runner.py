"""Real `dccnext` processes without paying for Python + torch imports each time (helpers).

`python runner.py` imports the CLI once, then for each JSON request on stdin ({"args": [...], "env": {...},
"out": "stdout path", "err": "stderr path"}) forks a child that runs the command with those extra environment
variables and answers with its exit status as the OS reports it (a negative signal number when it was killed).
Each child is a real process: a SIGKILL it sends itself kills it as it would kill `dccnext` started from a
shell. The server does no torch work before forking (one thread), so forking it is safe.
"""

from __future__ import annotations

import json
import os
import sys


def _child(request: dict) -> None:
    os.environ.update(request.get("env", {}))
    for fd, path in ((1, request["out"]), (2, request["err"])):
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(handle, fd)
        os.close(handle)
    sys.stdout, sys.stderr = open(1, "w", closefd=False), open(2, "w", closefd=False)
    from dccnext_cli.cli.app import build_app

    code = 1
    try:
        build_app()(args=request["args"], prog_name="dccnext")
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main() -> None:
    import dccnext_cli.classification.train  # noqa: F401
    import dccnext_cli.cli.app  # noqa: F401  (the expensive imports, once)

    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request)
        _, status = os.waitpid(pid, 0)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        print(json.dumps({"returncode": code}), flush=True)


if __name__ == "__main__":
    main()
