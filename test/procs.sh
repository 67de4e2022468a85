# procs.sh
#		Process and port helpers shared by test/lib.sh and
#		test/kafka/broker.sh.

# Print a TCP port that is free on 127.0.0.1 at the time of the call.
free_port()
{
	python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# Whether process $1 exists and is not a zombie (an exited process whose
# parent, init in some containers, does not reap it).
alive()
{
	local state

	state=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
	[[ $state != Z* ]]
}
