# ruby: a thread counting and a Timeout block expiring again and again.
#   READY pid=PID   once started
#   TICK n          from the thread, every 100 ms
#   TIMEOUT k       each time a 0.3 s Timeout interrupts a longer sleep
require 'timeout'
$stdout.sync = true
n = 0
Thread.new do
  loop do
    n += 1
    puts "TICK #{n}"
    sleep 0.1
  end
end
puts "READY pid=#{Process.pid}"
k = 0
loop do
  begin
    Timeout.timeout(0.3) { sleep 5 }
    puts 'FAIL the sleep was not interrupted'
  rescue Timeout::Error
    k += 1
    puts "TIMEOUT #{k}"
  end
end
