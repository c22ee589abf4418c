// pgjdbc (Debian's libpostgresql-jdbc-java) with HikariCP (libhikaricp-java): pgjdbc's
// startup parameters and connect-time `SET extra_float_digits = 3`, its server-prepared
// statements (named, after prepareThreshold = 5 executions of a statement it caches per
// connection), Hikari's validation on checkout (isValid) and its autocommit reset on return,
// with more app connections than the pooler's server pool. The contract with
// tests/frameworks.rs is fwcommon.py's.
import com.zaxxer.hikari.HikariConfig;
import com.zaxxer.hikari.HikariDataSource;
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.sql.Connection;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CyclicBarrier;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;

public class Hikari {
    static final int CONNS = Integer.parseInt(env("FW_CONNS", "10"));
    static final int TXNS = Integer.parseInt(env("FW_TXNS", "300"));
    static final double SECONDS = Double.parseDouble(env("FW_SECONDS", "60"));
    static final int WORKERS = CONNS - 1;
    static final int PER_WORKER = (TXNS + WORKERS - 1) / WORKERS;
    static final String OWN_TIMEOUT = "12345ms";
    static final String DEFAULT_TIMEOUT = "0";
    static final long START = System.nanoTime();

    static final AtomicInteger committed = new AtomicInteger();
    static final AtomicInteger errors = new AtomicInteger();
    static final AtomicInteger ownChecks = new AtomicInteger();
    static final List<String> samples = new ArrayList<>();

    static String env(String name, String dflt) {
        String v = System.getenv(name);
        return v == null ? dflt : v;
    }

    static boolean inTime() {
        return (System.nanoTime() - START) / 1e9 < SECONDS;
    }

    static void error(String what) {
        errors.incrementAndGet();
        synchronized (samples) {
            if (samples.size() < 5) {
                samples.add(what.length() > 300 ? what.substring(0, 300) : what);
            }
        }
    }

    static String quote(String s) {
        return "\"" + s.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", " ") + "\"";
    }

    public static void main(String[] args) throws Exception {
        HikariConfig cfg = new HikariConfig();
        cfg.setJdbcUrl("jdbc:postgresql://" + System.getenv("FW_HOST") + ":" + System.getenv("FW_PORT")
                + "/" + System.getenv("FW_DB") + "?ApplicationName=fw-hikari");
        cfg.setUsername(System.getenv("FW_USER"));
        cfg.setPassword(System.getenv("FW_PASSWORD"));
        cfg.setMaximumPoolSize(CONNS);
        cfg.setConnectionTimeout(30000);
        HikariDataSource ds = new HikariDataSource(cfg);
        try (Connection c = ds.getConnection(); Statement st = c.createStatement()) {
            st.execute("CREATE TABLE fw_items (id serial PRIMARY KEY, worker int NOT NULL, n int NOT NULL)");
        }

        CyclicBarrier barrier = new CyclicBarrier(WORKERS + 1);
        AtomicBoolean done = new AtomicBoolean();
        CyclicBarrier release = new CyclicBarrier(2);
        List<Thread> workers = new ArrayList<>();
        for (int w = 0; w < WORKERS; w++) {
            final int worker = w;
            Thread t = new Thread(() -> {
                try (Connection c = ds.getConnection()) {
                    barrier.await();
                } catch (Exception e) {
                    error("warm-up: " + e);
                }
                for (int i = 0; i < PER_WORKER && inTime(); i++) {
                    try (Connection c = ds.getConnection()) {
                        c.setAutoCommit(false);
                        try (PreparedStatement ins = c.prepareStatement(
                                "INSERT INTO fw_items (worker, n) VALUES (?, ?)")) {
                            ins.setInt(1, worker);
                            ins.setInt(2, i);
                            ins.executeUpdate();
                        }
                        long count;
                        String timeout;
                        String digits;
                        try (PreparedStatement q = c.prepareStatement(
                                "SELECT count(*), current_setting('statement_timeout'), "
                                        + "current_setting('extra_float_digits') FROM fw_items WHERE worker = ?")) {
                            q.setInt(1, worker);
                            try (ResultSet rs = q.executeQuery()) {
                                rs.next();
                                count = rs.getLong(1);
                                timeout = rs.getString(2);
                                digits = rs.getString(3);
                            }
                        }
                        c.commit();
                        if (count != i + 1) {
                            error("worker " + worker + " txn " + i + ": counted " + count + " own rows");
                        } else if (!DEFAULT_TIMEOUT.equals(timeout)) {
                            error("worker " + worker + " txn " + i + ": statement_timeout " + timeout + ", another client's");
                        } else if (!"3".equals(digits)) {
                            error("worker " + worker + " txn " + i + ": extra_float_digits " + digits + ", pgjdbc set 3");
                        } else {
                            committed.incrementAndGet();
                        }
                    } catch (Exception e) {
                        error(e.toString());
                    }
                }
            });
            workers.add(t);
        }
        Thread owner = new Thread(() -> {
            try (Connection c = ds.getConnection()) {
                try (Statement st = c.createStatement()) {
                    st.execute("SET statement_timeout = '" + OWN_TIMEOUT + "'");
                }
                barrier.await();
                try (PreparedStatement show = c.prepareStatement("SHOW statement_timeout")) {
                    while (true) {
                        boolean finished = done.get();
                        try (ResultSet rs = show.executeQuery()) {
                            rs.next();
                            String timeout = rs.getString(1);
                            if (OWN_TIMEOUT.equals(timeout)) {
                                ownChecks.incrementAndGet();
                            } else {
                                error("own connection: statement_timeout " + timeout);
                            }
                        } catch (Exception e) {
                            error("own connection: " + e);
                        }
                        if (finished) {
                            break;
                        }
                        Thread.sleep(20);
                    }
                }
                release.await();
            } catch (Exception e) {
                error("own connection: " + e);
            }
        });
        for (Thread t : workers) {
            t.start();
        }
        owner.start();
        for (Thread t : workers) {
            t.join();
        }
        done.set(true);
        long rows;
        try (Connection c = ds.getConnection(); Statement st = c.createStatement();
                ResultSet rs = st.executeQuery("SELECT count(*) FROM fw_items")) {
            rs.next();
            rows = rs.getLong(1);
        }
        int connections = ds.getHikariPoolMXBean().getTotalConnections();
        StringBuilder s = new StringBuilder();
        synchronized (samples) {
            for (String e : samples) {
                s.append(s.length() == 0 ? "" : ",").append(quote(e));
            }
        }
        System.out.println("{\"stack\":\"hikari\",\"expected\":" + (WORKERS * PER_WORKER) + ",\"committed\":"
                + committed.get() + ",\"errors\":" + errors.get() + ",\"error_samples\":[" + s + "],\"rows\":"
                + rows + ",\"own_checks\":" + ownChecks.get() + ",\"connections\":" + connections + "}");
        System.out.flush();
        new BufferedReader(new InputStreamReader(System.in)).readLine();
        release.await();
        owner.join();
        ds.close();
    }
}
