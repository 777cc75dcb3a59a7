"""The GPU machine's package lists stay in step with pyproject.toml.

The GPU run (benchmarks/gpu/run.sh) installs carried wheels with ``--no-deps``, so a dependency added to
pyproject.toml must be in the GPU image, in ``wheels.txt``, or in ``not_carried.txt`` with a reason; otherwise
``fetch_wheels.sh`` stops on the next GPU session. This checks the lists alone (no network, no wheels).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from packaging.utils import canonicalize_name

GPU = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu"


def _check_wheels():
    spec = importlib.util.spec_from_file_location("check_wheels", GPU / "check_wheels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_declared_requirement_is_in_the_image_carried_or_explained():
    check_wheels = _check_wheels()
    known = {
        **check_wheels.listed_names(GPU / "gpu_image_packages.txt"),
        **check_wheels.listed_names(GPU / "wheels.txt"),
        **check_wheels.listed_names(GPU / "not_carried.txt"),
    }
    requirements = [r for r in check_wheels.project_requirements() if check_wheels.needed_for_target(r)]
    assert {"torch", "transformer-lens", "nnsight"} <= {canonicalize_name(r.name) for r in requirements}
    missing = [str(r) for r in requirements if canonicalize_name(r.name) not in known]
    assert not missing, f"add these to benchmarks/gpu/wheels.txt or not_carried.txt (with the reason): {missing}"


def test_not_carried_entries_each_give_a_reason():
    reasons = _check_wheels().listed_names(GPU / "not_carried.txt")
    assert reasons and all(len(reason.split()) >= 5 for reason in reasons.values()), reasons
