"""The same server on Ray Serve: the FastAPI app as the ingress deployment, and the encoder, the
LLM and each decoder as deployments of their own (`nextgpt serve --ray`, or `serve deploy` with
deploy/ray/serve-config.yaml).

- replicas.py: the stage deployments; each replica loads only its stage and runs the stage
  functions of server/stages.py, streaming text deltas and decoder steps back.
- backend.py: `RayStages`, the scheduler's backend that calls those deployments through
  handles, and `RemoteModel`, what the ingress knows of the model without loading it.
- app.py: the ingress deployment, the application builder and `serve_on_ray` (the CLI).
"""
