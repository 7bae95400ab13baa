"""What the two layers above the core share and neither may own: the batch jobs (`pipelines`)
and the Ray Serve app (`deployments`) never import each other, and the core (`qwen3_embed`)
imports neither them nor pydantic. Their configs' common base lives here
(`qwen3_embed_layers.config_base`): one frozen base, the core's knobs as pydantic fields, and one
error style for a refused config."""
