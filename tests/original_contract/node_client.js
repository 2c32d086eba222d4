// A Node.js client built from the original contract (emotion.proto beside this
// file), as a caller who generated it years ago would run it: proto-loader with
// the field names as written, every field present with its default.
//
//   node tests/original_contract/node_client.js 127.0.0.1:50051 photo.jpg
//
// Prints the answer of Pipeline/run_pipeline as JSON on stdout; on an error,
// prints the gRPC status on stderr and exits 1. Needs `npm ci` first.
"use strict";

const fs = require("fs");
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const [target, image] = process.argv.slice(2);
if (!target || !image) {
  console.error("usage: node node_client.js HOST:PORT IMAGE");
  process.exit(2);
}

const definition = protoLoader.loadSync(path.join(__dirname, "emotion.proto"), {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});
const { Pipeline } = grpc.loadPackageDefinition(definition).emotion.v1;
const client = new Pipeline(target, grpc.credentials.createInsecure());
const deadline = new Date(Date.now() + 30_000);

client.run_pipeline({ image: fs.readFileSync(image) }, { deadline }, (error, reply) => {
  client.close();
  if (error) {
    console.error(`${grpc.status[error.code]} (${error.code}): ${error.details}`);
    process.exit(1);
  }
  process.stdout.write(JSON.stringify(reply) + "\n");
});
