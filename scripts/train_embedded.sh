#!/usr/bin/env bash
# The command that trained the embedded model (2-core CPU, about 80 minutes).
set -euo pipefail
python -m florence2.cli train --out runs/embedded --steps 7000 --batch-size 32 --grad-accum 2 \
  --lr 4e-4 --warmup 500 --vocab-size 600 --scene-size 128 --image-size 128 --seed 0 \
  --log-every 50 --eval-every 500 --save-every 500 --no-progress \
  --tasks "OD=3,REFERRING_EXPRESSION_SEGMENTATION=2,OCR=1.5,OCR_WITH_REGION=1,CAPTION=1,DETAILED_CAPTION=0.5,MORE_DETAILED_CAPTION=0.3,CAPTION_TO_PHRASE_GROUNDING=1,DENSE_REGION_CAPTION=0.7,REGION_PROPOSAL=0.5,REGION_TO_SEGMENTATION=1,OPEN_VOCABULARY_DETECTION=1,REGION_TO_CATEGORY=0.7,REGION_TO_DESCRIPTION=0.5,REGION_TO_OCR=0.7"
