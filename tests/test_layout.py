"""The README's "Where things live" names every module of the package, and nothing that is not there."""

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _listing() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Where things live", 1)[1]
    return section.split("```", 2)[1]  # the code block right under the heading


def test_every_module_is_in_the_readme_listing():
    listing = _listing()
    package = ROOT / "src" / "jaxvae"
    for path in sorted(package.rglob("*.py")):
        if path.name in ("__init__.py", "__main__.py") and path.parent != package / "data":
            continue
        rel = path.relative_to(package)
        name = rel.stem if len(rel.parts) == 1 else f"{rel.parts[0]}/"
        assert re.search(rf"(^|\s){re.escape(rel.name if len(rel.parts) == 1 else name)}", listing, re.M), rel
        if len(rel.parts) > 1 and path.stem != "__init__":  # a subpackage's modules by name, in its entry
            assert re.search(rf"\b{path.stem}\b", listing), rel
    for named in re.findall(r"^  (\w+\.py)\s", listing, re.M):  # no module listed that is gone
        assert (package / named).is_file(), named
