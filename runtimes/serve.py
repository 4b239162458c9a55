"""Child side of :class:`runtimes.remote.RemoteRunner`: serve one artifact over stdin/stdout.

Run as ``python -m qexport.runtimes.serve RUNTIME ARTIFACT HINTS_JSON`` inside the runtime's own
environment. Frames: one status byte (``K`` ok, ``E`` error) then, for ok, a JSON line (the
hello) or a .npy array; for errors, one line of text. Anything the runtime prints goes to
stderr, because stdout carries the frames.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def claim_stdout():
    """Keep the real stdout for frames; send everything else (library chatter) to stderr."""
    from qexport.runtimes.base import Stream

    frames = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    return Stream(frames)


def send_error(frames, message: str) -> None:
    frames.write(b"E" + message.replace("\n", " ").encode() + b"\n")
    frames.flush()


def hello(runner, packages: list[str]) -> dict:
    from qexport.core.envinfo import package_versions

    return {"describe": runner.describe(), "versions": package_versions(packages)}


def serve(runtime: str, artifact: str, hints_json: str) -> int:
    frames = claim_stdout()
    import numpy as np

    from qexport import runtimes
    from qexport.core.errors import describe_exception, user_message

    from qexport.core.manifest import LoadHints

    try:
        runner = runtimes.load_runner(runtime, Path(artifact), hints=LoadHints.from_dict(json.loads(hints_json)))
    except Exception as err:  # reported to the parent as one sentence
        send_error(frames, user_message(err))
        return 0
    from qexport.runtimes import RUNTIMES

    declared = RUNTIMES[runtime].packages if runtime in RUNTIMES else ()
    frames.write(b"K" + json.dumps(hello(runner, list(declared))).encode() + b"\n")
    frames.flush()
    from qexport.runtimes.base import Stream

    stdin = sys.stdin.buffer
    requests = Stream(stdin)
    while stdin.peek(1):  # b"" once the parent closes our stdin
        try:
            batch = np.lib.format.read_array(requests)
        except (ValueError, EOFError):
            break
        try:
            out = runner.predict(batch)
        except Exception as err:
            send_error(frames, describe_exception(err))
            continue
        frames.write(b"K")
        np.lib.format.write_array(frames, np.ascontiguousarray(out, dtype=np.float32))
        frames.flush()
    return 0


if __name__ == "__main__":
    sys.exit(serve(*sys.argv[1:4]))
