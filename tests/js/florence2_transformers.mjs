// Runs an exported Florence-2 folder with transformers.js (its Florence-2 model and processor), from
// local files only, and prints one JSON object: {task: {text, ids, result}} for each task.
//
// usage: node florence2_transformers.mjs TRANSFORMERS_JS_PACKAGE_DIR MODEL_DIR DTYPE IMAGE MAX_NEW_TOKENS TASK...
// DTYPE: transformers.js' name of the graphs to load (fp32: onnx/*.onnx, int8: onnx/*_int8.onnx, fp16: ...).
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const [packageDir, modelDir, dtype, imagePath, maxNewTokens, ...tasks] = process.argv.slice(2);
const entry = path.join(packageDir, 'dist', 'transformers.node.mjs');
const { env, AutoProcessor, Florence2ForConditionalGeneration, RawImage } = await import(pathToFileURL(entry).href);

env.allowRemoteModels = false; // no network: the folder is the whole model
env.allowLocalModels = true;
env.localModelPath = path.dirname(path.resolve(modelDir));
const name = path.basename(path.resolve(modelDir));

const model = await Florence2ForConditionalGeneration.from_pretrained(name, { dtype, device: 'cpu' });
const processor = await AutoProcessor.from_pretrained(name);
const image = await RawImage.read(imagePath);

const results = {};
for (const task of tasks) {
    const inputs = await processor(image, processor.construct_prompts(task));
    const ids = await model.generate({ ...inputs, max_new_tokens: Number(maxNewTokens) });
    const text = processor.batch_decode(ids, { skip_special_tokens: false })[0];
    results[task] = {
        text,
        ids: Array.from(ids.data, Number),
        result: processor.post_process_generation(text, task, image.size)[task],
    };
}
process.stdout.write(JSON.stringify(results) + '\n');
