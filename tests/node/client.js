// node-postgres through tenant-proxy: real work, then a JSON report on stdout.
// Usage: node client.js <dsn> [<ca-file>]
'use strict';
const fs = require('fs');
const { Client } = require('pg');
const { from: copyFrom, to: copyTo } = require('pg-copy-streams');
const { pipeline } = require('stream/promises');
const { Readable, Writable } = require('stream');

async function main() {
  const [dsn, caFile] = process.argv.slice(2);
  const report = {};
  const client = new Client({ connectionString: dsn });
  await client.connect();
  try {
    await client.query('DROP TABLE IF EXISTS node_items');
    await client.query('CREATE TABLE node_items (id int PRIMARY KEY, label text)');
    for (let i = 1; i <= 10; i++) {
      // Parameterised queries use the extended protocol.
      await client.query('INSERT INTO node_items VALUES ($1, $2)', [i, `label ${i}`]);
    }
    // A named prepared statement, executed twice.
    const named = { name: 'by_id', text: 'SELECT label FROM node_items WHERE id = $1' };
    report.named = [
      (await client.query({ ...named, values: [3] })).rows[0].label,
      (await client.query({ ...named, values: [4] })).rows[0].label,
    ];
    await client.query('BEGIN');
    await client.query('DELETE FROM node_items');
    await client.query('ROLLBACK');
    report.afterRollback = Number((await client.query('SELECT count(*) AS n FROM node_items')).rows[0].n);
    try {
      await client.query('SELECT * FROM node_missing_table');
    } catch (err) {
      report.errorCode = err.code;
    }
    report.usableAfterError = (await client.query('SELECT 40 + 2 AS v')).rows[0].v;
    await pipeline(Readable.from(['100\tcopied\n', '101\tcopied too\n']),
                   client.query(copyFrom('COPY node_items FROM STDIN')));
    const chunks = [];
    await pipeline(client.query(copyTo('COPY (SELECT id FROM node_items WHERE id >= 100 ORDER BY id) TO STDOUT')),
                   new Writable({ write(c, _e, cb) { chunks.push(c); cb(); } }));
    report.copyOut = Buffer.concat(chunks).toString();
    // LISTEN/NOTIFY on the same connection.
    const notified = new Promise((resolve) => client.on('notification', (m) => resolve(m.payload)));
    await client.query('LISTEN node_chan');
    await client.query("NOTIFY node_chan, 'node says hi'");
    report.notification = await notified;
    // Cancel a long query through the proxy's BackendKeyData.
    const started = Date.now();
    const sleeper = client.query('SELECT pg_sleep(30)').catch((err) => err.code);
    await new Promise((r) => setTimeout(r, 300));
    // pg's cancel path: a new connection sending CancelRequest with our key.
    const cancelClient = new Client({ connectionString: dsn });
    cancelClient.cancel(client, client.activeQuery);
    report.cancelCode = await sleeper;
    report.cancelMillis = Date.now() - started;
  } finally {
    await client.end();
  }
  if (caFile) {
    const tls = new Client({ connectionString: dsn, ssl: { ca: fs.readFileSync(caFile), servername: 'localhost' } });
    await tls.connect();
    report.tls = (await tls.query('SELECT 1 AS one')).rows[0].one === 1 && tls.connection.stream.encrypted === true;
    await tls.end();
  }
  const bad = new Client({ connectionString: dsn.replace(/:[^:@/]+@/, ':definitely-wrong@') });
  try {
    await bad.connect();
    report.wrongPassword = 'connected';
  } catch (err) {
    report.wrongPassword = err.code;
  }
  process.stdout.write(JSON.stringify(report));
}

main().catch((err) => { console.error(err); process.exit(1); });
