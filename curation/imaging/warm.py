"""Warm-up of the content kernels, imported by the inventory before any file's time bound starts
(`InventoryConfig.pool`'s preload): by the forkserver, so the workers it forks start with numba
imported and the kernels loaded from numba's on-disk cache (or compiled, the first time on a
machine); by spawn workers before they report ready; by the calling process with workers=1. It
resolves `content.backend()` once and never raises: where numba is unavailable it is numpy."""

from __future__ import annotations

from curation.imaging.content import backend

backend()
