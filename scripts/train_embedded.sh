#!/usr/bin/env bash
# The commands that trained the embedded model on a 2-core CPU, then packaged it. Three stages:
#   1. a fresh model; its DaViT alone learns for 1000 steps to name what covers each image token
#      (8 shapes, text, background), its colour (--vision-pretrain-colors 1) and the distances from
#      the token to the edges of that object's box (--vision-pretrain-boxes 1), peak lr 3e-3; its
#      linear heads are thrown away
#   2. the task mixture with that vision tower frozen, steps 0-2000 of a cosine schedule over 5400
#      steps (peak 4e-4, 300 warm-up steps), world seed 0: the decoder learns to name shapes
#   3. everything trained, from stage 2's checkpoint, a new cosine schedule over 4400 steps (peak
#      4e-4, 100 warm-up steps), world seed 1: localisation
# Batches of 32 fresh synthetic scenes (128 px, 1-4 shapes) throughout; both stages' held-out loss
# on world seed 1. Logged time: stage 1 439 s, stage 2 885 s, stage 3 2683 s
# (docs/embedded-training.jsonl, "elapsed"), 67 min in all.
set -euo pipefail
TASKS="OD=3,REFERRING_EXPRESSION_SEGMENTATION=2,OCR=1.5,OCR_WITH_REGION=1,CAPTION=1,DETAILED_CAPTION=0.5"
TASKS="$TASKS,MORE_DETAILED_CAPTION=0.3,CAPTION_TO_PHRASE_GROUNDING=1,DENSE_REGION_CAPTION=0.7,REGION_PROPOSAL=0.5"
TASKS="$TASKS,REGION_TO_SEGMENTATION=1,OPEN_VOCABULARY_DETECTION=1,REGION_TO_CATEGORY=0.7"
TASKS="$TASKS,REGION_TO_DESCRIPTION=0.5,REGION_TO_OCR=0.7"
common=(--batch-size 32 --grad-accum 2 --lr 4e-4 --log-every 50 --eval-every 500 --save-every 500 --no-progress)
python -m florence2.cli train --out runs/embedded --steps 5400 --warmup 300 --vocab-size 600 --scene-size 128 \
  --image-size 128 --seed 0 --vision-pretrain-steps 1000 --vision-pretrain-lr 3e-3 --vision-pretrain-colors 1 \
  --vision-pretrain-boxes 1 --freeze-vision --stop-at 2000 "${common[@]}" --tasks "$TASKS"
python -m florence2.cli train --model runs/embedded/checkpoint-last --out runs/embedded-unfrozen --steps 4400 \
  --warmup 100 --seed 1 --eval-seed 1 "${common[@]}" --tasks "$TASKS"
python scripts/package_embedded.py runs/embedded-unfrozen/checkpoint-last   # fp16 weights, greedy decoding
