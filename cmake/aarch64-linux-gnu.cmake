# aarch64-linux-gnu.cmake: cross-build allot for 64-bit Arm Linux on an
# x86-64 host (Debian: gcc-aarch64-linux-gnu g++-aarch64-linux-gnu
# libc6-dev-arm64-cross qemu-user), tests run under qemu-aarch64.
#
#   cmake -S . -B build-aarch64 -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake
#
# scripts/cross-aarch64.sh does this and runs the tests (docs/testing.md).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(ALLOT_CROSS_TRIPLE aarch64-linux-gnu)
set(CMAKE_C_COMPILER ${ALLOT_CROSS_TRIPLE}-gcc)
set(CMAKE_CXX_COMPILER ${ALLOT_CROSS_TRIPLE}-g++)
set(ALLOT_CROSS_SYSROOT /usr/${ALLOT_CROSS_TRIPLE})
set(CMAKE_FIND_ROOT_PATH ${ALLOT_CROSS_SYSROOT})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
# CTest runs every test executable through this. -L: the target's loader and
# libraries. -R: a 512 GiB address space, as an aarch64 kernel with 39-bit
# virtual addresses has; without it qemu tracks every page of the
# conformance tests' 1 TiB-aligned requests and needs some 19 GB of its own
# memory for them (docs/testing.md, "aarch64").
set(CMAKE_CROSSCOMPILING_EMULATOR
    qemu-aarch64;-L;${ALLOT_CROSS_SYSROOT};-R;0x8000000000)
