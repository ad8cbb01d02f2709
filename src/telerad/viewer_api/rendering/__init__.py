"""Server-side rendering of stored frames (PS3.18 §10.4 rendered resources and thumbnails).

:mod:`.windowing` (pure numpy: Modality LUT, VOI LUT functions, presets, colour),
:mod:`.attributes` (pure: rendering attributes from DICOM JSON), :mod:`.images` (viewport,
media types, Pillow encoders), :mod:`.cache` (byte-bounded LRU, prefetch threads) and
:mod:`.pipeline` (the I/O shell: read, decode, render, cache).
"""
