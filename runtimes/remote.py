"""A runner whose runtime lives in another Python environment (IPEX under torch 2.8).

Build-time measurement and ``qexport verify`` talk to a ``runtimes.serve`` child over pipes,
so the main environment never imports the foreign runtime. Timing never goes through here:
``qexport bench`` starts its worker directly in the foreign interpreter.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np

from qexport.core.errors import QExportError
from qexport.core.manifest import LoadHints
from qexport.runtimes.base import Runner, Stream
from qexport.runtimes.foreign import child_env


class RemoteRunner(Runner):
    def __init__(self, process: subprocess.Popen, runtime: str, info: dict):
        self.process, self.runtime, self.info = process, runtime, info

    @classmethod
    def start(cls, python: str, runtime: str, path: Path, hints: LoadHints) -> "RemoteRunner":
        process = subprocess.Popen([python, "-m", "qexport.runtimes.serve", runtime, str(path),
                                    json.dumps(hints.to_dict())],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                   env=child_env())
        runner = cls(process, runtime, {})
        runner.requests, runner.replies = Stream(process.stdin), Stream(process.stdout)
        runner.info = json.loads(runner._receive(expect_array=False))
        return runner

    @classmethod
    def load(cls, path, *, device="cpu", threads=None, hints=None, settings=None):  # pragma: no cover - use start()
        raise NotImplementedError("RemoteRunner is created by runtimes.load_runner")

    def _receive(self, expect_array: bool):
        status = self.replies.read(1)
        if status == b"K":
            return np.lib.format.read_array(self.replies) if expect_array else self.replies.readline()
        message = self.replies.readline().decode(errors="replace").strip() if status == b"E" else \
            f"the {self.runtime} process exited unexpectedly (code {self.process.poll()})"
        self.close()
        raise QExportError(message)

    def prepare(self, batch: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(batch, dtype=np.float32)

    def run_native(self, native: np.ndarray) -> np.ndarray:
        if self.process.poll() is not None:
            raise QExportError(f"the {self.runtime} process is no longer running")
        np.lib.format.write_array(self.requests, native)
        self.requests.flush()
        return self._receive(expect_array=True)

    def to_numpy(self, output: np.ndarray) -> np.ndarray:
        return output

    def describe(self) -> dict:
        return {**self.info.get("describe", {}), "remote": True}

    def installed_versions(self) -> dict:
        return self.info.get("versions", {})

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
