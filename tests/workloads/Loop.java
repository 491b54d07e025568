// loop (Java): a self-checking victim for crimg, like loop.py and loop.sh.
// A JVM brings many threads (GC, JIT, signal dispatcher), large reserved
// heaps and its own signal handlers: a real program to round-trip.
//
//   READY pid=<pid> interval_ms=<n> threads=<jvm threads>
//   TICK n                    every --interval-ms
//   stdin "check"  -> PASS loop.java pid=<current pid> tick=<n> sum=<heap checksum>
//                     or FAIL loop.java <reason>
//   stdin "quit"   -> BYE, exit 0
import java.io.BufferedReader;
import java.io.InputStreamReader;

public class Loop {
    public static void main(String[] args) throws Exception {
        long interval = 10;
        for (int i = 0; i + 1 < args.length; i++) {
            if (args[i].equals("--interval-ms")) interval = Long.parseLong(args[i + 1]);
        }
        // 32 MiB of patterned heap whose checksum must survive.
        long[] data = new long[4 << 20];
        for (int i = 0; i < data.length; i++) data[i] = i * 0x9E3779B97F4A7C15L;
        long expected = checksum(data);
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
        System.out.println("READY pid=" + ProcessHandle.current().pid() + " interval_ms=" + interval
                + " threads=" + Thread.getAllStackTraces().size() + " sum=" + expected);
        long tick = 0, tickSum = 0;
        while (true) {
            while (System.in.available() > 0) {
                String line = in.readLine();
                if (line == null) return;
                if (line.equals("quit")) {
                    System.out.println("BYE");
                    return;
                }
                if (line.equals("check")) {
                    long sum = checksum(data);
                    if (sum != expected) {
                        System.out.println("FAIL loop.java heap checksum " + sum + " expected " + expected);
                    } else if (tickSum != tick * (tick + 1) / 2) {
                        System.out.println("FAIL loop.java tick sum " + tickSum + " does not match tick " + tick);
                    } else {
                        System.out.println("PASS loop.java pid=" + ProcessHandle.current().pid()
                                + " tick=" + tick + " sum=" + sum);
                    }
                }
            }
            tick++;
            tickSum += tick;
            System.out.println("TICK " + tick);
            Thread.sleep(interval);
        }
    }

    static long checksum(long[] data) {
        long h = 0xcbf29ce484222325L;
        for (long v : data) h = (h ^ v) * 0x100000001b3L;
        return h;
    }
}
