"""Reference: a REST server with base64 JSON (FastAPI on uvicorn), doing the mock model's work.

POST /predict with {"image": "<base64>"} answers {"response": [result]} with the
same fields as the contract. One uvicorn process, as `uvicorn app:app` runs.

    python benchmarks/reference_rest.py --port 8000
"""

from __future__ import annotations

import argparse
import base64
import binascii
import io

import uvicorn
from fastapi import FastAPI, HTTPException
from PIL import Image
from pydantic import BaseModel

app = FastAPI()

ZERO_BOX = {"x1": 0.0, "y1": 0.0, "x2": 0.0, "y2": 0.0}
ZERO_EXPRESSION = dict.fromkeys(
    ("neutral", "anger", "disgust", "fear", "happiness", "sadness", "surprise"), 0.0
)


class PredictRequest(BaseModel):
    image: str


@app.post("/predict")
def predict(request: PredictRequest) -> dict[str, object]:
    try:
        image = Image.open(io.BytesIO(base64.b64decode(request.image, validate=True)))
        image.resize((128, 128))
    except (binascii.Error, OSError, ValueError) as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from None
    return {"response": [{"bbox": ZERO_BOX, "expression": ZERO_EXPRESSION}]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
