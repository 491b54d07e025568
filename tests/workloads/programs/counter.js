// node: a setInterval counter, an fs.watch on a file and an HTTP server on
// a loopback port (chosen by the kernel), each printed as a line:
//   READY port=P pid=PID     once listening
//   TICK n                   every 100 ms
//   WATCH <event>            when the watched file changes
// The server answers `count n`. Usage: node counter.js WATCHED_FILE
'use strict';
const fs = require('fs');
const http = require('http');

const watched = process.argv[2];
let n = 0;
fs.watch(watched, (event) => console.log('WATCH ' + event));
setInterval(() => { n += 1; console.log('TICK ' + n); }, 100);
const server = http.createServer((req, res) => res.end('count ' + n + '\n'));
server.listen(0, '127.0.0.1', () => {
  console.log('READY port=' + server.address().port + ' pid=' + process.pid);
});
