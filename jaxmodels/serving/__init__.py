"""Serving a run behind an OpenAI-compatible HTTP API (serve.py is the command).

  loader.py   checkpoint dir (or released weights via config.init) -> model + tokenizer + config
              (trainer.setup.restore_eval_model, the loader evaluate.py uses)
  schema.py   request validation: OpenAI-style 400s naming the field, size limits, image decoding
  engine.py   dynamic batching: bounded queue (429), one worker, bucketed shapes, program count
  decode.py   prefill + compiled decode chunks: streaming, early stop, per-row sampling and seeds
  app.py      the HTTP endpoints (http.server): bearer key, timeouts, disconnects, SSE
"""
