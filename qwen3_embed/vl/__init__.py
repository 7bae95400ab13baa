"""The multimodal family: Qwen3-VL-Embedding (text, images, videos and mixes in one space).

Modules, one job each:
- `extra`: checks the `[vl]` extra is installed (torchvision, qwen-vl-utils, av);
- `media`: turns an image source (PIL, bytes, data URI, path, URL) into a decoded PIL image, with
  limits (`MediaOptions`);
- `video`: decodes a video file or samples a frame list the way the official embedder does;
- `items`: validates an input item and builds the official chat conversation for it;
- `preparer`: `VLPreparer`, the CPU stage (processor, no weights);
- `backend`: `VLBackend`, the device stage (`Qwen3VLModel`).

Nothing here is imported by `import qwen3_embed`; the text path works without the extra.
"""
