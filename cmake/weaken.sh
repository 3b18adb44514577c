#!/bin/sh
# weaken.sh IN.o OUT.o: copy an object file with every undefined symbol made
# weak. liballot.so uses it for the C++ operators, so the library needs no
# C++ runtime of its own: in a C++ program libstdc++ (or libc++) is loaded
# anyway and the weak references bind to it; in a C program nothing calls
# operator new and the references stay null, and libstdc++ is not loaded
# (1 MiB of RSS and a millisecond of start-up saved in every C process).
set -eu
in=$1
out=$2
args=$(nm -u "$in" | awk '{print "--weaken-symbol=" $2}')
# shellcheck disable=SC2086
objcopy $args "$in" "$out"
