# ActiveRecord (Rails 6.1, Debian's ruby-activerecord + ruby-pg) with its own connection pool:
# its connect-time SETs (client_min_messages, standard_conforming_strings, intervalstyle,
# timezone), its prepared statements (exec_prepared, on by default), and its connection
# reset (`reset!`: DISCARD ALL, then the connect-time SETs again), with more app connections
# than the pooler's server pool. The contract with tests/frameworks.rs is fwcommon.py's.
require "active_record"
require "json"

HOST = ENV.fetch("FW_HOST")
PORT = Integer(ENV.fetch("FW_PORT"))
CONNS = Integer(ENV.fetch("FW_CONNS", "10"))
TXNS = Integer(ENV.fetch("FW_TXNS", "300"))
SECONDS = Float(ENV.fetch("FW_SECONDS", "60"))
WORKERS = CONNS - 1
PER_WORKER = (TXNS + WORKERS - 1) / WORKERS
OWN_TIMEOUT = "12345ms"
DEFAULT_TIMEOUT = "0"
START = Process.clock_gettime(Process::CLOCK_MONOTONIC)

def in_time
  Process.clock_gettime(Process::CLOCK_MONOTONIC) - START < SECONDS
end

class Barrier
  def initialize(n)
    @n = n
    @mutex = Mutex.new
    @cond = ConditionVariable.new
  end

  def wait
    @mutex.synchronize do
      @n -= 1
      @n <= 0 ? @cond.broadcast : (@cond.wait(@mutex) while @n > 0)
    end
  end
end

ActiveRecord::Migration.verbose = false
ActiveRecord::Base.establish_connection(
  adapter: "postgresql", host: HOST, port: PORT, username: ENV.fetch("FW_USER"),
  password: ENV.fetch("FW_PASSWORD"), database: ENV.fetch("FW_DB"), pool: CONNS,
  checkout_timeout: 30, application_name: "fw-activerecord"
)
ActiveRecord::Schema.define do
  create_table :fw_items do |t|
    t.integer :worker, null: false
    t.integer :n, null: false
  end
end

class Item < ActiveRecord::Base
  self.table_name = "fw_items"
end

pool = ActiveRecord::Base.connection_pool
# The main thread's connection (the schema's) goes back: the pool is for the threads below.
pool.release_connection
lock = Mutex.new
tally = { committed: 0, errors: 0, samples: [], own_checks: 0 }
error = lambda do |what|
  lock.synchronize do
    tally[:errors] += 1
    tally[:samples] << what.to_s[0, 300] if tally[:samples].size < 5
  end
end
barrier = Barrier.new(WORKERS + 1)
done = false
release = Queue.new

workers = (0...WORKERS).map do |w|
  Thread.new do
    pool.with_connection { barrier.wait }
    PER_WORKER.times do |i|
      break unless in_time
      begin
        count = timeout = cmm = nil
        pool.with_connection do
          Item.transaction do
            item = Item.create!(worker: w, n: i)
            # Record loads are what AR prepares (`count` it sends unprepared).
            found = Item.find(item.id)
            raise "find(#{item.id}) gave #{found.attributes}" unless found.worker == w && found.n == i
            count = Item.where(worker: w).to_a.size
            timeout, cmm = Item.connection.select_rows(
              "SELECT current_setting('statement_timeout'), current_setting('client_min_messages')"
            ).first
          end
        end
        if count != i + 1
          error.call("worker #{w} txn #{i}: counted #{count} own rows, expected #{i + 1}")
        elsif timeout != DEFAULT_TIMEOUT
          error.call("worker #{w} txn #{i}: statement_timeout #{timeout.inspect}, another client's")
        elsif cmm != "warning"
          error.call("worker #{w} txn #{i}: client_min_messages #{cmm.inspect}, AR set warning")
        else
          lock.synchronize { tally[:committed] += 1 }
        end
      rescue StandardError => e
        error.call("#{e.class}: #{e.message}")
      end
    end
  end
end

owner = Thread.new do
  conn = pool.checkout
  begin
    conn.execute("SET statement_timeout = '#{OWN_TIMEOUT}'")
    barrier.wait
    rounds = 0
    loop do
      finished = done
      begin
        # SET LOCAL inside an AR transaction, and a SET in one that rolls back: both gone.
        conn.transaction { conn.execute("SET LOCAL statement_timeout = '1s'") }
        conn.transaction do
          conn.execute("SET statement_timeout = '2s'")
          raise ActiveRecord::Rollback
        end
        timeout = conn.select_value("SHOW statement_timeout")
        # A statement AR prepares on this connection (exec_prepared), before and after reset!.
        owned = conn.exec_query(
          "SELECT count(*) FROM fw_items WHERE worker = $1 AND n >= $2", "SQL",
          [ActiveRecord::Relation::QueryAttribute.new("worker", 0, ActiveRecord::Type::Integer.new),
           ActiveRecord::Relation::QueryAttribute.new("n", 0, ActiveRecord::Type::Integer.new)],
          prepare: true
        ).rows.first.first
        error.call("own connection: count #{owned.inspect}") unless owned.is_a?(Integer)
        if timeout == OWN_TIMEOUT
          lock.synchronize { tally[:own_checks] += 1 }
        else
          error.call("own connection: statement_timeout #{timeout.inspect}, expected #{OWN_TIMEOUT}")
        end
        rounds += 1
        if rounds == 5
          # AR's connection reset: DISCARD ALL, then its connect-time SETs again. The
          # setting is gone, AR's own are back, its prepared statements work again.
          conn.reset!
          after = conn.select_value("SHOW statement_timeout")
          cmm = conn.select_value("SHOW client_min_messages")
          unless after == DEFAULT_TIMEOUT && cmm == "warning"
            error.call("after reset!: statement_timeout #{after.inspect}, client_min_messages #{cmm.inspect}")
          end
          conn.execute("SET statement_timeout = '#{OWN_TIMEOUT}'")
        end
      rescue StandardError => e
        error.call("own connection: #{e.class}: #{e.message}")
      end
      break if finished
      sleep 0.02
    end
    release.pop
  ensure
    pool.checkin(conn)
  end
end

workers.each(&:join)
done = true
rows = pool.with_connection { Item.count }
puts JSON.generate(
  stack: "activerecord", expected: WORKERS * PER_WORKER, committed: tally[:committed],
  errors: tally[:errors], error_samples: tally[:samples], rows: rows,
  own_checks: tally[:own_checks], connections: pool.connections.size
)
$stdout.flush
$stdin.gets
release << true
owner.join
pool.disconnect!
