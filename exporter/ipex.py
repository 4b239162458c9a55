"""IPEX families (int8 static, bf16), built in the IPEX environment by ``exporter/ipex_child.py``.

IPEX 2.8.0 needs torch 2.8.*, so this module -- imported in the main torch-2.14 environment --
never imports IPEX: it hands the trained weights, the seeded train-split calibration images and
an example input to a child process in ``.venv-ipex`` and gets back a TorchScript file plus what
was done. Measurement, golden I/O and the manifest then follow the same path as every family
(through a served runner in that environment). Without the environment both families are
*skipped* with the command that installs it.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from qexport.core.documents import parse
from qexport.core.options import FamilyConfig, TargetedInt8Config
from qexport.exporter.registry import BuildContext, BuildDetails, register
from qexport.core.manifest import Precision, RuntimeSection
from qexport.core.errors import QExportError
from qexport.core.hardware import int8_activation_range, requirement
from qexport.core.progress import say
from qexport.runtimes.foreign import child_env, environments, foreign_python

CHILD = Path(__file__).with_name("ipex_child.py")
CHILD_TIMEOUT_S = 1800
# IPEX's own check for bf16 weight prepack (measured: on an AVX2-only EPYC it refuses with "BF16 weight
# prepack needs the cpu support avx_ne_convert or avx512bw, avx512vl and avx512dq"). Native bf16
# arithmetic additionally needs AVX-512 BF16 or AMX-BF16; without them IPEX emulates it.
BF16_NEEDS = requirement("AVX-512 (BW, VL, DQ) or AVX-NE-CONVERT",
                         {"avx512bw", "avx512vl", "avx512dq"}, {"avx_ne_convert"})


def child_spec(ctx: BuildContext, config: FamilyConfig, folder: Path, precision: str, output: Path) -> dict:
    """Write what the child needs as plain tensors/arrays (loadable by torch 2.8, no pickles)."""
    torch.save(ctx.fresh_model().state_dict(), folder / "state_dict.pt")
    np.save(folder / "example.npy", ctx.example.numpy())
    spec = {"model": ctx.model_name, "num_classes": ctx.data.num_classes, "image_size": ctx.data.image_size[0],
            "precision": precision,
            "state_dict": str(folder / "state_dict.pt"), "example": str(folder / "example.npy"),
            "seed": ctx.shared.seed, "output": str(output), "result": str(folder / "result.json"),
            "embedded_meta": {"model": ctx.model_name, "variant": f"{precision}-ipex", "classes": ctx.data.classes,
                              "mean": list(ctx.data.mean), "std": list(ctx.data.std)}}
    if precision == Precision.INT8:  # its config is a TargetedInt8Config
        np.save(folder / "calibration.npy", torch.cat(list(ctx.calibration_batches())).numpy())
        spec["calibration"] = str(folder / "calibration.npy")
        spec["reduced_range"] = config.int8_reduced_range
        spec["activation_range"] = int8_activation_range(spec["reduced_range"])
    return spec


def build_in_ipex_env(ctx: BuildContext, config: FamilyConfig, path: Path, precision: str) -> BuildDetails:
    python = foreign_python("ipex")  # RuntimeMissing → the family is skipped, with the fix
    with tempfile.TemporaryDirectory(prefix="qexport-ipex-") as tmp:
        folder = Path(tmp)
        spec = child_spec(ctx, config, folder, precision, path)
        (folder / "spec.json").write_text(json.dumps(spec))
        say(f"  building in the IPEX environment ({python})")
        try:
            done = subprocess.run([python, str(CHILD), str(folder / "spec.json")], env=child_env(),
                                  capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
        except subprocess.TimeoutExpired as err:
            raise QExportError(f"the IPEX build did not finish in {CHILD_TIMEOUT_S} s") from err
        if done.returncode != 0 or not (folder / "result.json").is_file():
            lines = [line for line in done.stderr.strip().splitlines() if line.strip()] or ["no output"]
            raise QExportError(f"the IPEX build failed in {python}: {lines[-1][:200]}")
        result = json.loads((folder / "result.json").read_text())
    versions = result.pop("runtime_versions")
    say(f"  the IPEX build took {result.pop('child_seconds')} s in its environment")
    details = parse(BuildDetails, result, "the IPEX build's result")
    return replace(details, runtime=ipex_runtime_section(versions))


def ipex_runtime_section(versions: dict[str, str]) -> RuntimeSection:
    """The manifest's runtime section from the IPEX environment's versions, under the version rule
    the runtime declares (``runtimes.ipex_release``)."""
    from qexport.runtimes import RUNTIMES

    return RuntimeSection(
        name="ipex", environment=f"separate ({environments()['ipex'].setup})",
        requires=RUNTIMES["ipex"].requires(versions),
        tested_with=dict(versions),
        load="import intel_extension_for_pytorch before torch.jit.load (else int8 is ~30x slower, bf16 fails)")


@register("ipex-int8", variant="int8-ipex", format="torchscript", extension=".torchscript.pt",
          precision=Precision.INT8, runtime="ipex",
          method="IPEX static PTQ (default static qconfig mapping, 7-bit activations for targets without VNNI), calibrate, convert, trace + freeze, fused before save",
          config=TargetedInt8Config, isolate=False)
def build_ipex_int8(ctx: BuildContext, config: TargetedInt8Config, path: Path) -> BuildDetails:
    return build_in_ipex_env(ctx, config, path, Precision.INT8)


@register("ipex-bf16", variant="bf16-ipex", format="torchscript", extension=".torchscript.pt",
          precision=Precision.BF16, runtime="ipex",
          method="ipex.optimize(dtype=bfloat16), trace under CPU autocast + freeze",
          build_needs=BF16_NEEDS, run_needs=BF16_NEEDS, isolate=False)
def build_ipex_bf16(ctx: BuildContext, config: FamilyConfig, path: Path) -> BuildDetails:
    return build_in_ipex_env(ctx, config, path, Precision.BF16)
