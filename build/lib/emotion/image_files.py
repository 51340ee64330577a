"""Which file names are images: the one suffix list every listing of image files uses
(``emotion tag`` input folders, ``emotion eval`` class folders)."""

from __future__ import annotations

# Lower-case; listings compare case-insensitively (``storage.list_files``). Every format
# here decodes through ``emotion.images.decode_image`` (Pillow); TIFF is how JAFFE ships.
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
