#!/usr/bin/env bash
# The commands that trained the embedded model on a 2-core CPU: one cosine schedule over 7000 steps of
# 32 fresh synthetic scenes, with a curriculum in three phases (resumed exactly between phases):
#   steps    0-1500  scenes of 1-4 shapes
#   steps 1500-3000  scenes of 1 shape (the model had learnt the language prior but ignored the image)
#   steps 3000-7000  scenes of 1-4 shapes
set -euo pipefail
TASKS="OD=3,REFERRING_EXPRESSION_SEGMENTATION=2,OCR=1.5,OCR_WITH_REGION=1,CAPTION=1,DETAILED_CAPTION=0.5"
TASKS="$TASKS,MORE_DETAILED_CAPTION=0.3,CAPTION_TO_PHRASE_GROUNDING=1,DENSE_REGION_CAPTION=0.7,REGION_PROPOSAL=0.5"
TASKS="$TASKS,REGION_TO_SEGMENTATION=1,OPEN_VOCABULARY_DETECTION=1,REGION_TO_CATEGORY=0.7"
TASKS="$TASKS,REGION_TO_DESCRIPTION=0.5,REGION_TO_OCR=0.7"
train() {
  python -m florence2.cli train --out runs/embedded --steps 7000 --batch-size 32 --grad-accum 2 \
    --lr 4e-4 --warmup 500 --vocab-size 600 --scene-size 128 --image-size 128 --seed 0 \
    --log-every 50 --eval-every 500 --save-every 500 --no-progress --tasks "$TASKS" "$@"
}
train --stop-at 1500
train --resume --max-objects 1 --stop-at 3000
train --resume
