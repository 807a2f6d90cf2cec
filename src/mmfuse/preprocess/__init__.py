"""Image, audio and text transforms plus deduplication, shared by the pipeline and the service.

`sample.preprocess_sample` (one raw sample -> tensors) is what the service calls;
`stage.run` (a manifest -> processed splits) is the DVC/Prefect stage; both compose
the same functions of `image`, `audio` and `text`, and share `state.PreprocessState`.
Nothing is imported here: config.py imports `params` and must stay light.
"""
