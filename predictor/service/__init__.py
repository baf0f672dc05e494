"""Protocol-free serving: one `DetectionService` per model (batcher, deadlines, readiness,
metrics) and the `ModelRegistry` of them. No aiohttp here: the protocols in
`predictor.http` call `DetectionService.detect` and map its domain errors.
"""
