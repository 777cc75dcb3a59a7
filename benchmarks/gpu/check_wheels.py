"""Check that a folder of wheels completes the GPU machine's Python environment, before a run depends on it.

The GPU machine installs the folder with ``pip install --no-index --no-deps``, so nothing there checks
dependencies: this does, here. Every wheel must install on CPython 3.12, manylinux x86_64; no package may
come twice; and every dependency that a wheel, or this project (with its ``test`` extra), declares for
that interpreter must be in the image (``gpu_image_packages.txt``), among the wheels, or in
``not_carried.txt`` with the reason it is not needed. Prints the set and its size; exits 1 on any gap.

    python benchmarks/gpu/check_wheels.py .whl
    python benchmarks/gpu/check_wheels.py .whl --installable-here   # the wheels this interpreter can install
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.tags import compatible_tags, cpython_tags, sys_tags
from packaging.utils import canonicalize_name, parse_wheel_filename

HERE = Path(__file__).parent
# The interpreter and platform of the GPU machine (Python 3.12.3 on x86-64 Linux, glibc manylinux).
TARGET_ENVIRONMENT = {
    "python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
    "platform_python_implementation": "CPython", "implementation_version": "3.12.3", "os_name": "posix",
    "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "extra": "",
}
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(39, 4, -1)] + ["manylinux2014_x86_64", "manylinux1_x86_64",
                                                                            "linux_x86_64"]
SUPPORTED_TAGS = set(cpython_tags((3, 12), platforms=PLATFORMS)) | set(compatible_tags((3, 12), "cp312", PLATFORMS))


def listed_names(path: Path) -> dict[str, str]:
    """Canonical package name -> the rest of its line, from a file of one name per line ('#' comments)."""
    names = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, rest = line.strip().partition(" ")
            names[canonicalize_name(name.split("==")[0])] = rest.strip()
    return names


def requirements_of(wheel: Path) -> list[Requirement]:
    """The Requires-Dist entries of a wheel's METADATA."""
    with zipfile.ZipFile(wheel) as archive:
        metadata_name = next(name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(metadata_name).decode())
    return [Requirement(text) for text in metadata.get_all("Requires-Dist") or []]


def project_requirements() -> list[Requirement]:
    """This project's dependencies and its ``test`` extra, from pyproject.toml."""
    project = tomllib.loads((HERE.parent.parent / "pyproject.toml").read_text())["project"]
    return [Requirement(text) for text in project["dependencies"] + project["optional-dependencies"]["test"]]


def needed_for_target(requirement: Requirement) -> bool:
    return requirement.marker is None or requirement.marker.evaluate(TARGET_ENVIRONMENT)


def installable_here(folder: Path) -> int:
    """Print the wheels the running interpreter can install (for a dry run on another Python than 3.12)."""
    here = set(sys_tags())
    for wheel in sorted(folder.glob("*.whl")):
        if parse_wheel_filename(wheel.name)[3] & here:
            print(wheel)
        else:
            print(f"only the GPU machine's Python installs {wheel.name}; this one keeps its own copy", file=sys.stderr)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="the wheel folder (.whl)")
    parser.add_argument("--installable-here", action="store_true",
                        help="only list the wheels this interpreter can install, one path per line")
    args = parser.parse_args()
    if args.installable_here:
        return installable_here(args.folder)
    image = listed_names(HERE / "gpu_image_packages.txt")
    not_carried = listed_names(HERE / "not_carried.txt")
    wanted = listed_names(HERE / "wheels.txt")
    problems: list[str] = []
    wheels: dict[str, Path] = {}
    for wheel in sorted(args.folder.glob("*.whl")):
        name, _, _, tags = parse_wheel_filename(wheel.name)
        if name in wheels:
            problems.append(f"{name} comes twice ({wheels[name].name}, {wheel.name}): pip would refuse the install")
        wheels[name] = wheel
        if not tags & SUPPORTED_TAGS:
            problems.append(f"{wheel.name} does not install on CPython 3.12 manylinux x86_64")
        if name in image:
            problems.append(f"{wheel.name} shadows the image's own {name}; drop it from wheels.txt")
    problems += [f"{name} is in wheels.txt but not in {args.folder}" for name in wanted if name not in wheels]
    needed_by = {name: requirements_of(path) for name, path in wheels.items()}
    needed_by["this project"] = project_requirements()
    for owner, requirements in needed_by.items():
        for requirement in filter(needed_for_target, requirements):
            name = canonicalize_name(requirement.name)
            if name not in image and name not in wheels and name not in not_carried and name != "vit-sae-hooks":
                problems.append(f"{owner} needs {requirement}, which is neither in the image nor carried; "
                                "add it to wheels.txt (or to not_carried.txt with the reason)")
    size = sum(path.stat().st_size for path in wheels.values())
    print(f"{len(wheels)} wheels, {size / 2**20:.1f} MiB in {args.folder}:")
    for path in wheels.values():
        print(f"  {path.name}  ({path.stat().st_size / 2**10:.0f} KiB)")
    for name, reason in not_carried.items():
        print(f"  not carried: {name}: {reason}")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print("the wheel set is complete for the GPU image" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
