"""A static feature browser: ``build_site`` writes a folder that any browser opens from disk (see files.py for
its layout and build.py for what it shows)."""

from vit_sae_hooks.viz.site.build import Site, build_site

__all__ = ["Site", "build_site"]
