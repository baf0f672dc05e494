#!/usr/bin/env node
// Runs a TensorFlow.js graph model with the pure-JavaScript CPU backend of
// @tensorflow/tfjs: the reference the converted MXNet graphs are checked
// against (predictor/convert/reference.py drives it).
//
// Usage: node run_graph.cjs REQUEST.json
//
// REQUEST.json:
//   {"model": "/path/model.json",
//    "node_modules": "/path/to/node_modules",      // where `npm ci` put @tensorflow/tfjs
//    "runs": [{"inputs": {"NAME": {"shape": [..], "file": "/path/x.f32"}},
//              "outputs": ["NAME", ...],           // graph node names, optionally ":k"
//              "out_prefix": "/path/run0-"}]}
// Inputs are raw little-endian float32 files. Each output is written as raw
// float32 to OUT_PREFIX + index + ".f32"; stdout gets one JSON line per run:
//   {"outputs": [{"name", "shape", "file"}], "ms": milliseconds of execute()}
'use strict';

const fs = require('fs');
const path = require('path');

function loadTf(nodeModules) {
  const resolved = require.resolve('@tensorflow/tfjs', { paths: [nodeModules] });
  return require(resolved);
}

function readModel(modelPath) {
  const model = JSON.parse(fs.readFileSync(modelPath, 'utf8'));
  const dir = path.dirname(modelPath);
  const weightSpecs = [];
  const buffers = [];
  // The groups' files, concatenated in manifest order, are the weight buffer
  // whose layout the specs describe (as tf.io's own loaders do).
  for (const group of model.weightsManifest || []) {
    for (const spec of group.weights) weightSpecs.push(spec);
    for (const file of group.paths) buffers.push(fs.readFileSync(path.join(dir, file)));
  }
  const joined = Buffer.concat(buffers);
  const weightData = joined.buffer.slice(joined.byteOffset, joined.byteOffset + joined.byteLength);
  return {
    modelTopology: model.modelTopology,
    format: model.format,
    generatedBy: model.generatedBy,
    convertedBy: model.convertedBy,
    signature: model.signature,
    userDefinedMetadata: model.userDefinedMetadata,
    weightSpecs,
    weightData,
  };
}

function readFloat32(file, shape) {
  const bytes = fs.readFileSync(file);
  const count = shape.reduce((a, b) => a * b, 1);
  if (bytes.byteLength !== count * 4) {
    throw new Error(`${file}: ${bytes.byteLength} bytes, shape ${JSON.stringify(shape)} needs ${count * 4}`);
  }
  // Copy into an aligned buffer: a Buffer's offset into its pool may not be a multiple of 4.
  const aligned = new Float32Array(count);
  new Uint8Array(aligned.buffer).set(bytes);
  return aligned;
}

async function main() {
  const request = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
  const tf = loadTf(request.node_modules);
  await tf.setBackend('cpu');
  await tf.ready();
  const artifacts = readModel(request.model);
  const model = await tf.loadGraphModel(tf.io.fromMemory(artifacts));
  for (const run of request.runs) {
    const inputs = {};
    for (const [name, spec] of Object.entries(run.inputs)) {
      inputs[name] = tf.tensor(readFloat32(spec.file, spec.shape), spec.shape, 'float32');
    }
    const started = process.hrtime.bigint();
    let outputs = await model.executeAsync(inputs, run.outputs);
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    if (!Array.isArray(outputs)) outputs = [outputs];
    const written = [];
    for (let i = 0; i < outputs.length; i += 1) {
      const values = await outputs[i].data();
      const asFloat = values instanceof Float32Array ? values : Float32Array.from(values);
      const file = `${run.out_prefix}${i}.f32`;
      fs.writeFileSync(file, Buffer.from(asFloat.buffer, asFloat.byteOffset, asFloat.byteLength));
      written.push({ name: run.outputs[i], shape: outputs[i].shape, file });
    }
    tf.dispose([...Object.values(inputs), ...outputs]);
    process.stdout.write(`${JSON.stringify({ outputs: written, ms })}\n`);
  }
}

main().catch((error) => {
  process.stderr.write(`run_graph: ${error && error.stack ? error.stack : error}\n`);
  process.exit(1);
});
