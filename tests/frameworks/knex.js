// knex on node-postgres (npm `knex` + `pg`) with knex's own pool (tarn): transactions through
// knex, the pool's afterCreate hook setting a session setting on every new connection (the
// usual knex idiom for a time zone), node-postgres's named prepared statements on the
// connection kept aside, with more app connections than the pooler's server pool. The
// contract with tests/frameworks.rs is fwcommon.py's.
const path = require('path');
const modules = path.join(__dirname, '..', '..', 'target', 'frameworks', 'node', 'node_modules');
const knexLib = require(path.join(modules, 'knex'));
const readline = require('readline');

const env = process.env;
const CONNS = Number(env.FW_CONNS || 10);
const TXNS = Number(env.FW_TXNS || 300);
const SECONDS = Number(env.FW_SECONDS || 60);
const WORKERS = CONNS - 1;
const PER_WORKER = Math.ceil(TXNS / WORKERS);
const OWN_TIMEOUT = '12345ms';
const OPTIONS_TIMEOUT = '23456ms';
const DEFAULT_TIMEOUT = '0';
const TIME_ZONE = 'Pacific/Auckland';
const start = Date.now();
const inTime = () => (Date.now() - start) / 1000 < SECONDS;

const tally = { committed: 0, errors: 0, samples: [], ownChecks: 0 };
function error(what) {
  tally.errors += 1;
  if (tally.samples.length < 5) tally.samples.push(String(what).slice(0, 300));
}

const knex = knexLib({
  client: 'pg',
  connection: {
    host: env.FW_HOST, port: Number(env.FW_PORT), user: env.FW_USER,
    password: env.FW_PASSWORD, database: env.FW_DB, application_name: 'fw-knex',
  },
  pool: {
    min: 0, max: CONNS,
    afterCreate: (conn, done) => conn.query(`SET timezone = '${TIME_ZONE}'`, (err) => done(err, conn)),
  },
  acquireConnectionTimeout: 30000,
});

class Barrier {
  constructor(n) { this.n = n; this.waiters = []; }
  wait() {
    this.n -= 1;
    if (this.n <= 0) { this.waiters.forEach((r) => r()); return Promise.resolve(); }
    return new Promise((r) => this.waiters.push(r));
  }
}

async function main() {
  await knex.schema.createTable('fw_items', (t) => {
    t.increments('id');
    t.integer('worker').notNullable();
    t.integer('n').notNullable();
  });
  const barrier = new Barrier(WORKERS + 2);
  let done = false;
  let release;
  const released = new Promise((r) => { release = r; });

  async function worker(w) {
    const conn = await knex.client.acquireConnection();
    await barrier.wait();
    await knex.client.releaseConnection(conn);
    for (let i = 0; i < PER_WORKER && inTime(); i++) {
      try {
        const row = await knex.transaction(async (trx) => {
          await trx('fw_items').insert({ worker: w, n: i });
          return trx('fw_items').where({ worker: w }).first(
            trx.raw('count(*)::int AS count'),
            trx.raw("current_setting('statement_timeout') AS timeout"),
            trx.raw("current_setting('TimeZone') AS tz"),
          );
        });
        if (row.count !== i + 1) error(`worker ${w} txn ${i}: counted ${row.count} own rows`);
        else if (row.timeout !== DEFAULT_TIMEOUT) error(`worker ${w} txn ${i}: statement_timeout ${row.timeout}, another client's`);
        else if (row.tz !== TIME_ZONE) error(`worker ${w} txn ${i}: TimeZone ${row.tz}, afterCreate set ${TIME_ZONE}`);
        else tally.committed += 1;
      } catch (e) {
        error(e);
      }
    }
  }

  async function own() {
    // A node-postgres client straight from knex's pool, kept for the whole run.
    const conn = await knex.client.acquireConnection();
    try {
      await conn.query(`SET statement_timeout = '${OWN_TIMEOUT}'`);
      await barrier.wait();
      for (;;) {
        const finished = done;
        try {
          // A named statement: node-postgres prepares it once per connection.
          const r = await conn.query({ name: 'fw-own-timeout', text: "SELECT current_setting('statement_timeout') AS t WHERE $1::int = 1", values: [1] });
          if (r.rows[0].t === OWN_TIMEOUT) tally.ownChecks += 1;
          else error(`own connection: statement_timeout ${r.rows[0].t}`);
        } catch (e) {
          error(`own connection: ${e}`);
        }
        if (finished) break;
        await new Promise((r) => setTimeout(r, 20));
      }
      await released;
    } finally {
      await knex.client.releaseConnection(conn);
    }
  }

  async function ownByOptions() {
    // node-postgres straight, its setting given at connect as `options=-c ...`: a startup
    // parameter that only this connection may see, whichever server serves it.
    const { Client } = require(path.join(modules, 'pg'));
    const client = new Client({
      host: env.FW_HOST, port: Number(env.FW_PORT), user: env.FW_USER,
      password: env.FW_PASSWORD, database: env.FW_DB, application_name: 'fw-knex-options',
      options: `-c statement_timeout=${OPTIONS_TIMEOUT}`,
    });
    await client.connect();
    try {
      await barrier.wait();
      for (;;) {
        const finished = done;
        try {
          const r = await client.query('SHOW statement_timeout');
          if (r.rows[0].statement_timeout === OPTIONS_TIMEOUT) tally.ownChecks += 1;
          else error(`options connection: statement_timeout ${r.rows[0].statement_timeout}`);
        } catch (e) {
          error(`options connection: ${e}`);
        }
        if (finished) break;
        await new Promise((r) => setTimeout(r, 20));
      }
      await released;
    } finally {
      await client.end();
    }
  }

  const owner = Promise.all([own(), ownByOptions()]);
  await Promise.all([...Array(WORKERS).keys()].map(worker));
  done = true;
  const { rows } = await knex('fw_items').first(knex.raw('count(*)::int AS rows'));
  const pool = knex.client.pool;
  console.log(JSON.stringify({
    stack: 'knex', expected: WORKERS * PER_WORKER, committed: tally.committed,
    errors: tally.errors, error_samples: tally.samples, rows,
    own_checks: tally.ownChecks, connections: pool.numUsed() + pool.numFree(),
  }));
  await new Promise((r) => readline.createInterface({ input: process.stdin }).once('line', r).once('close', r));
  release();
  await owner;
  await knex.destroy();
  process.exit(0);
}

main().catch((e) => { console.error(e); process.exit(1); });
