"""Label Studio ML backend for TinySAM: click-assisted brush masks and batch pre-annotation.

Modules, from the wire inwards:
- `app`: the WSGI app (Flask) for gunicorn — `/health`, `/livez`, `/setup`, `/predict`, `/webhook`, `/versions`;
- `gunicorn_conf`: gunicorn settings (model loaded per worker after fork, torch threads × workers = cores);
- `cli`: `tinysam serve`;
- `backend`: `/predict` over the core `Predictor` and `segment_everything`, with the embedding cache;
- `protocol`: pure conversions, Label Studio JSON → prompts and masks → brush result regions;
- `label_config`: which Image / BrushLabels / smart KeyPointLabels / RectangleLabels tags a project has;
- `brush_rle`: Label Studio's brush RLE, encode and decode;
- `images`: locating and fetching task images (Label Studio token, local media, SSRF guards);
- `cache`: bounded LRU with per-key single flight;
- `settings`: `LabelStudioSettings.from_env()`, the one place this part reads the environment.

Nothing is imported or loaded here; import the module you need.
"""
