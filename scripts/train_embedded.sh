#!/usr/bin/env bash
# The commands that trained the embedded model on a 2-core CPU, then packaged it.
#  1. Dense vision pre-training (florence2.train.vision_pretrain): 1000 steps of 32 fresh scenes, the
#     fresh DaViT alone learns to name what covers each image token (shape category, text,
#     background); peak LR 3e-3.
#  2. The whole model on the 15-task mixture: one cosine schedule (peak 4e-4, 300 warm-up steps,
#     5400 steps) over batches of 32 fresh synthetic scenes of 1-4 shapes.
set -euo pipefail
OUT="${OUT:-runs/embedded}"   # run folder
TASKS="OD=3,REFERRING_EXPRESSION_SEGMENTATION=2,OCR=1.5,OCR_WITH_REGION=1,CAPTION=1,DETAILED_CAPTION=0.5"
TASKS="$TASKS,MORE_DETAILED_CAPTION=0.3,CAPTION_TO_PHRASE_GROUNDING=1,DENSE_REGION_CAPTION=0.7,REGION_PROPOSAL=0.5"
TASKS="$TASKS,REGION_TO_SEGMENTATION=1,OPEN_VOCABULARY_DETECTION=1,REGION_TO_CATEGORY=0.7"
TASKS="$TASKS,REGION_TO_DESCRIPTION=0.5,REGION_TO_OCR=0.7"
python -m florence2.cli train --out "$OUT" --steps 5400 --batch-size 32 --grad-accum 2 \
  --lr 4e-4 --warmup 300 --vocab-size 600 --scene-size 128 --image-size 128 --seed 0 \
  --vision-pretrain-steps 1000 --vision-pretrain-lr 3e-3 \
  --log-every 50 --eval-every 500 --save-every 500 --no-progress --tasks "$TASKS" "$@"
python scripts/package_embedded.py "$OUT/checkpoint-last"   # fp16 weights, greedy decoding
