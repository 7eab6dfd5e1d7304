"""The chat templates of the installed LLaMA Factory, read from its source without importing it."""

import functools
import importlib.util
import os
import re

_TEMPLATE_CALL = re.compile(r"register_template\(\s*name\s*=\s*\"([^\"]+)\"")


@functools.lru_cache(maxsize=1)
def installed_templates():
    """Return LLaMA Factory's template names, read from its source without importing it (None if absent)."""
    spec = importlib.util.find_spec("llamafactory")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "template.py")
    try:
        with open(path, encoding="utf-8") as handle:
            names = _TEMPLATE_CALL.findall(handle.read())
    except OSError:
        return None
    return sorted(set(names)) or None
