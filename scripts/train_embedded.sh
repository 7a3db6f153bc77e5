#!/usr/bin/env bash
# The commands that trained the embedded model on a 2-core CPU, then packaged it. Four stages:
#   1. a fresh model; its DaViT alone learns for 1000 steps to name what covers each image token
#      (8 shapes, text, background), its colour (--vision-pretrain-colors 1) and the distances from
#      the token to the edges of that object's box (--vision-pretrain-boxes 1), peak lr 3e-3; its
#      linear heads are thrown away
#   2. the task mixture with that vision tower frozen, steps 0-2000 of a cosine schedule over 5400
#      steps (peak 4e-4, 300 warm-up steps), world seed 0: the decoder learns to name shapes
#   3. everything trained, from stage 2's checkpoint, a new cosine schedule over 4400 steps (peak
#      4e-4, 100 warm-up steps), world seed 1: localisation
#   4. from stage 3's checkpoint, a last cosine over 1300 steps (peak 2e-4, 50 warm-up steps), world
#      seed 2, detection and brief captions drawn more often (OD 4, CAPTION 1.5, DETAILED_CAPTION 0.7)
# Batches of 32 fresh synthetic scenes (128 px, 1-4 shapes) throughout; stages 2-4's held-out loss
# on world seed 1. Logged time: stage 1 439 s, stage 2 885 s, stage 3 2683 s, stage 4 1052 s
# (docs/embedded-training.jsonl, "elapsed"), 84 min in all. Stage 4 of the shipped model started from
# stage 3's weights as packaged (fp16, florence2/assets/model at commit 41003e2) and ran on a machine
# of the same kind but slower than the one that ran stages 1-3 (0.81 s per step against stage 3's 0.61).
set -euo pipefail
TASKS="OD=3,REFERRING_EXPRESSION_SEGMENTATION=2,OCR=1.5,OCR_WITH_REGION=1,CAPTION=1,DETAILED_CAPTION=0.5"
TASKS="$TASKS,MORE_DETAILED_CAPTION=0.3,CAPTION_TO_PHRASE_GROUNDING=1,DENSE_REGION_CAPTION=0.7,REGION_PROPOSAL=0.5"
TASKS="$TASKS,REGION_TO_SEGMENTATION=1,OPEN_VOCABULARY_DETECTION=1,REGION_TO_CATEGORY=0.7"
TASKS="$TASKS,REGION_TO_DESCRIPTION=0.5,REGION_TO_OCR=0.7"
common=(--batch-size 32 --grad-accum 2 --log-every 50 --eval-every 500 --save-every 500 --no-progress)
python -m florence2.cli train --out runs/embedded --steps 5400 --warmup 300 --vocab-size 600 --scene-size 128 \
  --image-size 128 --seed 0 --vision-pretrain-steps 1000 --vision-pretrain-lr 3e-3 --vision-pretrain-colors 1 \
  --vision-pretrain-boxes 1 --freeze-vision --stop-at 2000 --lr 4e-4 "${common[@]}" --tasks "$TASKS"
python -m florence2.cli train --model runs/embedded/checkpoint-last --out runs/embedded-unfrozen --steps 4400 \
  --warmup 100 --seed 1 --eval-seed 1 --lr 4e-4 "${common[@]}" --tasks "$TASKS"
STAGE4="OD=4,REFERRING_EXPRESSION_SEGMENTATION=2,OCR=1.5,OCR_WITH_REGION=1,CAPTION=1.5,DETAILED_CAPTION=0.7"
STAGE4="$STAGE4,${TASKS#*DETAILED_CAPTION=0.5,}"   # the other tasks as before
python -m florence2.cli train --model runs/embedded-unfrozen/checkpoint-last --out runs/embedded-stage4 --steps 1300 \
  --lr 2e-4 --warmup 50 --seed 2 --eval-seed 1 "${common[@]}" --tasks "$STAGE4"
python scripts/package_embedded.py runs/embedded-stage4/checkpoint-last   # fp16 weights, greedy decoding
