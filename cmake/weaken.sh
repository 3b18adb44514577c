#!/bin/sh
# weaken.sh IN.o OUT.o: copy an object file with every undefined symbol made
# weak. liballot.so uses it for the C++ operators, so the library needs no
# C++ runtime of its own: in a C++ program libstdc++ (or libc++) is loaded
# anyway and the weak references bind to it; in a C program nothing calls
# operator new and the references stay null, and libstdc++ is not loaded
# (1 MiB of RSS and a millisecond of start-up saved in every C process).
# NM and OBJCOPY name the target's tools when cross-building (cmake/cxx.cmake
# passes CMake's): the host's do not read an aarch64 object.
set -eu
in=$1
out=$2
args=$("${NM:-nm}" -u "$in" | awk '{print "--weaken-symbol=" $2}')
# shellcheck disable=SC2086
"${OBJCOPY:-objcopy}" $args "$in" "$out"
