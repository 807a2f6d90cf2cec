"""Image, audio and text transforms plus deduplication, shared by the pipeline and the service.

`sample.preprocess_sample` (one raw sample -> tensors) is what the service calls;
`build.build_processed` (a manifest -> processed splits) is what the preprocess stage runs; both compose
the same functions of `image`, `audio` and `text`, and share `state.PreprocessState`.
"""
