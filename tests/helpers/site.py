"""Reading a feature-browser site's data files back, as the page receives them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_data(site: Path, key: str) -> Any:
    """What ``site/data/<key>.js`` hands to the page (``vsh.loaded(key, data)``).

    Example:
        >>> read_data(Path("site"), "features/00000")["features"][0]["id"]
        0
    """
    text = (site / "data" / f"{key}.js").read_text()
    prefix = f"vsh.loaded({json.dumps(key)}, "
    assert text.startswith(prefix) and text.endswith(");\n"), f"{key} is not a data script"
    return json.loads(text[len(prefix) : -3])
