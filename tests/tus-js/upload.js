// Uploads one file with tus-js-client, as a third party would, for tests/test_tus_interop.py.
//   node upload.js ENDPOINT TOKEN PATH CHUNK_SIZE|all yes|no
// The last argument turns on creation-with-upload (the file's bytes go with the POST; for
// Buffer input tus-js-client sends them with Transfer-Encoding: chunked). Prints one JSON
// line: the upload's URL and the Upload-Offset the creation answer reported.
// TUS_JS_CLIENT names the package to use (default tus-js-client; see package.json).
const tus = require(process.env.TUS_JS_CLIENT || "tus-js-client");
const fs = require("fs");

const [endpoint, token, path, chunkSize, withCreation] = process.argv.slice(2);
const data = fs.readFileSync(path);
let creationOffset = null;
const options = {
  endpoint,
  headers: { Authorization: "Bearer " + token },
  metadata: { filename: "from-node.bin", filetype: "application/octet-stream" },
  retryDelays: [0, 100, 200, 500, 1000],
  uploadDataDuringCreation: withCreation === "yes",
  onAfterResponse(request, response) {
    if (request.getMethod() === "POST" && creationOffset === null) {
      creationOffset = Number(response.getHeader("Upload-Offset"));
    }
  },
  onError(error) {
    console.error(String(error));
    process.exit(1);
  },
  onSuccess() {
    console.log(JSON.stringify({ url: upload.url, creationOffset }));
  },
};
if (chunkSize !== "all") options.chunkSize = Number(chunkSize);
const upload = new tus.Upload(data, options);
upload.start();
