#!/usr/bin/env bash
# Builds xmoe against the LibTorch 2.x + CUDA of a GPU machine's Python PyTorch wheel and runs
# the CUDA tests (tests/test_cuda.cpp) and the rest of the suite there. See docs/gpu.md.
#
#   scripts/gpu_check.sh prepare [DIR]  on the Debian development machine (scripts/setup.sh done):
#                                       copy into DIR (default .gpucheck; list it in
#                                       .git/info/exclude) what the GPU machine lacks: headers of
#                                       nlohmann-json, CLI11, oneDNN and SentencePiece;
#                                       libdnnl.so.2 (xz), libsentencepiece*, libOpenCL.so.1;
#                                       GoogleTest sources; and DIR/run.sh, which calls `run`.
#   scripts/gpu_check.sh run [DIR]      on the GPU machine (python3 with torch, CMake, g++):
#                                       build and test in /tmp/xmoe-gpucheck. Never stops at a
#                                       failed stage; everything goes to stdout and to
#                                       $OUT/log.txt (else DIR/out/log.txt), with configure.log,
#                                       build.log and each test run's output beside it.
# Environment: GPU_CHECK_BUDGET_S (default 430) bounds the whole run in seconds; GPU_CHECK_JOBS
# (default nproc) the build's parallelism.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MODE=${1:-}
DIR=$(cd "$ROOT" && mkdir -p "${2:-.gpucheck}" && cd "${2:-.gpucheck}" && pwd)

prepare() {
  set -e
  local deps=$DIR/deps lib=/usr/lib/x86_64-linux-gnu
  rm -rf "$deps"
  mkdir -p "$deps/include/oneapi" "$deps/lib" "$deps/share/cmake" "$deps/src"
  cp -a /usr/include/nlohmann /usr/include/CLI "$deps/include/"
  cp -a /usr/include/oneapi/dnnl "$deps/include/oneapi/"
  cp -a /usr/include/dnnl*.h /usr/include/dnnl*.hpp "$deps/include/"
  cp -a /usr/include/sentencepiece_processor.h /usr/include/sentencepiece_trainer.h "$deps/include/"
  cp -a /usr/share/cmake/nlohmann_json /usr/share/cmake/CLI11 "$deps/share/cmake/"
  cp -L $lib/libsentencepiece.so.0 $lib/libsentencepiece_train.so.0 $lib/libOpenCL.so.1 "$deps/lib/"
  ln -s libsentencepiece.so.0 "$deps/lib/libsentencepiece.so"
  ln -s libsentencepiece_train.so.0 "$deps/lib/libsentencepiece_train.so"
  # libdnnl.so.2 is 40 MB; xz makes it 7 MB of the 64 MiB a device call carries.
  xz -T2 -6 -c "$(readlink -f $lib/libdnnl.so.2)" >"$deps/libdnnl.so.2.xz"
  cp -a /usr/src/googletest "$deps/src/"
  printf '%s\n' '#!/usr/bin/env bash' \
    '# Device entry point; the logic lives in scripts/gpu_check.sh.' \
    'here=$(cd "$(dirname "$0")" && pwd)' \
    'exec bash "$here/../scripts/gpu_check.sh" run "$here"' >"$DIR/run.sh"
  chmod +x "$DIR/run.sh"
  du -sh "$DIR"
}

if [ "$MODE" = prepare ]; then prepare; exit; fi
if [ "$MODE" != run ]; then echo "usage: $0 prepare|run [DIR]" >&2; exit 2; fi

# ---- run -------------------------------------------------------------------------------------
OUTDIR=${OUT:-$DIR/out}
mkdir -p "$OUTDIR"
LOG=$OUTDIR/log.txt
BUDGET=${GPU_CHECK_BUDGET_S:-430}
JOBS=${GPU_CHECK_JOBS:-$(nproc)}
WORK=/tmp/xmoe-gpucheck
DEPS=$WORK/deps
BUILD=$WORK/build
GEN=Ninja
KEEP_GOING="-k 0"
CXX_STD=17
TORCH_PREFIX="" TORCH_ROOT="" TORCH_ABI=1 TESTS="" BACKTRACE_DONE=""
declare -a SUMMARY=()

stage() { echo; echo "=== [$(date +%T) t=${SECONDS}s] $*"; }
left() { local l=$((BUDGET - SECONDS)); [ $l -lt 5 ] && l=5; echo $l; }
record() { SUMMARY+=("$(printf '%-16s %s' "$1" "$2")"); echo ">>> $1: $2"; }

configure() {  # configure BUILD_DIR [extra cmake args...]
  local b=$1; shift
  timeout "$(left)" cmake -S "$ROOT" -B "$b" -G "$GEN" -DCMAKE_BUILD_TYPE=Release \
    -DXMOE_BUILD_BENCH=OFF -DCMAKE_CXX_STANDARD=$CXX_STD \
    -DCMAKE_PREFIX_PATH="$TORCH_PREFIX;$DEPS" -DGTest_DIR="$DEPS/lib/cmake/GTest" "$@" \
    >"$WORK/configure.log" 2>&1
  local rc=$?
  grep -iE "warn|error|torch|cuda|found" "$WORK/configure.log" | head -40
  if [ $rc -ne 0 ]; then
    tail -60 "$WORK/configure.log"
    tail -40 "$b/CMakeFiles/CMakeError.log" 2>/dev/null
  fi
  return $rc
}

run_tests() {  # run_tests NAME FILTER
  local name=$1 filter=$2 out=$OUTDIR/tests-$1.txt
  stage "tests: $name ($filter)"
  timeout "$(left)" "$TESTS" --gtest_filter="$filter" >"$out" 2>&1
  local rc=$?
  if [ "$name" = cuda ]; then
    cat "$out"
  else
    grep -E "^\[  FAILED  \]|^\[  SKIPPED \]|Failure$|^unknown file|C\+\+ exception" "$out" | head -80
  fi
  if [ $rc -ge 124 ]; then echo "(rc=$rc: timeout or crash; last lines:)"; tail -15 "$out"; fi
  if [ $rc -ge 128 ] && [ -z "$BACKTRACE_DONE" ] && command -v cuda-gdb >/dev/null; then
    # A crash: the backtrace of the test that was running (cuda-gdb also debugs host code).
    BACKTRACE_DONE=1
    local last
    last=$(grep '^\[ RUN      \]' "$out" | tail -1 | sed 's/^\[ RUN      \] //')
    timeout 90 cuda-gdb -batch -ex "set pagination off" -ex run -ex bt \
      --args "$TESTS" --gtest_filter="$last" 2>&1 | grep -E "^#|signal|SIG" | head -40
  fi
  local ran passed failed skipped
  ran=$(grep -c '^\[ RUN      \]' "$out")
  passed=$(grep -c '^\[       OK \]' "$out")
  skipped=$(grep -c '^\[  SKIPPED \] .* ([0-9]* ms)$' "$out")
  failed=$(grep -c '^\[  FAILED  \] .* ([0-9]* ms)$' "$out")
  record "tests $name" "rc=$rc ran=$ran passed=$passed failed=$failed skipped=$skipped"
}

main() {
  set -x
  stage "machine and toolchain"
  if [ -d /usr/local/cuda/bin ]; then export PATH=/usr/local/cuda/bin:$PATH; fi
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c '
import torch, platform
print("python", platform.python_version())
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
print("cuda available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
print("cxx11 abi", torch._C._GLIBCXX_USE_CXX11_ABI)
print("cmake prefix", torch.utils.cmake_prefix_path)'
  cmake --version | head -1; ninja --version; g++ --version | head -1; nvcc --version | tail -2
  if ! command -v ninja >/dev/null; then GEN="Unix Makefiles"; KEEP_GOING="-k"; fi
  TORCH_PREFIX=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
  TORCH_ROOT=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')
  TORCH_ABI=$(python3 -c 'import torch;print(int(torch._C._GLIBCXX_USE_CXX11_ABI))')
  # Newer LibTorch headers refuse C++17; ask for C++20 only where they do.
  if grep -rqs "C++20 or later compatible compiler" "$TORCH_ROOT/include/c10" \
       "$TORCH_ROOT/include/ATen" "$TORCH_ROOT/include/torch/csrc/api/include/torch"; then
    CXX_STD=20
  fi
  echo "libstdc++ for the link: $(g++ -print-file-name=libstdc++.so.6) $(g++ -print-file-name=libstdc++.so)"
  record torch "$(python3 -c 'import torch;print(torch.__version__, "CUDA", torch.version.cuda)'); C++$CXX_STD; cxx11 abi $TORCH_ABI; $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}

  stage "dependencies"
  rm -rf "$WORK"; mkdir -p "$WORK"
  cp -a "$DIR/deps" "$DEPS"
  python3 -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],"wb"))' \
    "$DEPS/libdnnl.so.2.xz" "$DEPS/lib/libdnnl.so.2" && rm "$DEPS/libdnnl.so.2.xz"
  ln -sf libdnnl.so.2 "$DEPS/lib/libdnnl.so"
  export LD_LIBRARY_PATH=$DEPS/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  if ldd "$DEPS/lib/libdnnl.so.2" "$DEPS/lib/libsentencepiece_train.so.0" | grep "not found"; then
    record deps "missing libraries (above)"
  fi
  if cmake -S "$DEPS/src/googletest" -B "$WORK/gtest-build" -G "$GEN" -DCMAKE_BUILD_TYPE=Release \
       -DBUILD_GMOCK=OFF -DINSTALL_GTEST=ON -DCMAKE_INSTALL_PREFIX="$DEPS" \
       -DCMAKE_POLICY_VERSION_MINIMUM=3.5 -DCMAKE_CXX_FLAGS="-D_GLIBCXX_USE_CXX11_ABI=$TORCH_ABI" \
       >"$WORK/gtest.log" 2>&1 &&
     cmake --build "$WORK/gtest-build" -j "$JOBS" >>"$WORK/gtest.log" 2>&1 &&
     cmake --install "$WORK/gtest-build" >>"$WORK/gtest.log" 2>&1; then
    record gtest built
  else
    tail -30 "$WORK/gtest.log"
    record gtest FAILED
  fi

  stage "configure (the wheel's TorchConfig.cmake)"
  if configure "$BUILD"; then
    record configure "ok (the wheel's TorchConfig.cmake)"
  else
    # Fallback: a stand-in config that takes the wheel's libraries and headers directly, with
    # no CUDA toolkit lookup (the usual cause of a failed find_package(Torch) on such machines).
    stage "configure (stand-in Torch config)"
    mkdir -p "$WORK/torchshim"
    local r=$TORCH_ROOT
    cat >"$WORK/torchshim/TorchConfig.cmake" <<EOF
add_library(xmoe_torch INTERFACE IMPORTED)
set_target_properties(xmoe_torch PROPERTIES
  INTERFACE_INCLUDE_DIRECTORIES "$r/include;$r/include/torch/csrc/api/include"
  INTERFACE_COMPILE_DEFINITIONS "_GLIBCXX_USE_CXX11_ABI=$TORCH_ABI"
  INTERFACE_LINK_OPTIONS "-Wl,-rpath,$r/lib"
  INTERFACE_LINK_LIBRARIES "-Wl,--no-as-needed;$r/lib/libtorch_cuda.so;$r/lib/libc10_cuda.so;-Wl,--as-needed;$r/lib/libtorch.so;$r/lib/libtorch_cpu.so;$r/lib/libc10.so")
set(TORCH_LIBRARIES xmoe_torch)
set(TORCH_INCLUDE_DIRS "$r/include;$r/include/torch/csrc/api/include")
set(Torch_FOUND TRUE)
EOF
    BUILD=$WORK/build-shim
    if configure "$BUILD" -DTorch_DIR="$WORK/torchshim"; then
      record configure "ok (stand-in Torch config; the wheel's TorchConfig.cmake FAILED)"
    else
      record configure "FAILED (both)"
    fi
  fi
  cp "$WORK/configure.log" "$OUTDIR/configure.log"

  stage "build xmoe, xmoe_cli, xmoe_tests (-j$JOBS, keep going)"
  timeout "$(left)" cmake --build "$BUILD" -j "$JOBS" --target xmoe_tests -- $KEEP_GOING \
    >"$OUTDIR/build.log" 2>&1
  local build_rc=$?
  tail -3 "$OUTDIR/build.log"
  if [ $build_rc -eq 0 ]; then
    record build ok
  else
    record build "FAILED rc=$build_rc: $(grep -c '^FAILED' "$OUTDIR/build.log") failed step(s), $(grep -c 'error:' "$OUTDIR/build.log") error line(s)"
    grep -E "^FAILED|undefined reference|ld returned" "$OUTDIR/build.log" | head -40
    grep -A12 -m 15 "error:" "$OUTDIR/build.log" | head -200
  fi
  TESTS=$BUILD/xmoe_tests
  stage "symbols: libstdc++ copies inside the wheel's libtorch.so"
  lscpu | grep -E "^Model name|^CPU\(s\)"
  echo "libtorch.so exports $(nm -D --defined-only "$TORCH_ROOT/lib/libtorch.so" | grep -c ' _ZNSt10filesystem') std::filesystem symbols"
  echo "libtorch_cpu.so exports $(nm -D --defined-only "$TORCH_ROOT/lib/libtorch_cpu.so" | grep -c ' T dnnl_') dnnl_* functions"
  readelf -d "$TESTS" 2>/dev/null | grep -E "NEEDED|RUNPATH|RPATH"
  if [ -x "$TESTS" ]; then
    # DNNL_VERBOSE (oneDNN 2.x; ONEDNN_VERBOSE in 3.x) prints the ISA oneDNN detected.
    DNNL_VERBOSE=1 ONEDNN_VERBOSE=1 LD_DEBUG=bindings LD_DEBUG_OUTPUT=$WORK/bindings timeout 60 "$TESTS" \
      --gtest_filter='SafetensorsTest.RoundTripIsBitExact:FastPathKernels.*' >"$WORK/bindings-run.txt" 2>&1
    echo "bindings run: rc=$? $(grep -E '^\[  (PASSED|FAILED)  \] [0-9]' "$WORK/bindings-run.txt" | tr '\n' ' ')"
    grep -iE "^(dnnl|onednn)_verbose" "$WORK/bindings-run.txt" | head -8
    cat "$WORK"/bindings.* 2>/dev/null | grep -E "filesystem10remove_all|dnnl_sgemm" | sed 's/^ *[0-9]*: *//' | head -4
    echo "libstdc++ symbols (_ZNSt*) bound to libtorch.so: $(cat "$WORK"/bindings.* 2>/dev/null | grep -c "to .*/libtorch.so \[.*_ZNSt")"
  fi

  if [ ! -x "$TESTS" ] && [ -f "$BUILD/libxmoe.a" ]; then
    # The library built but the test binary did not (a test file or the CLI it depends on
    # failed): build the tests against libxmoe.a alone, every test file if they all compile,
    # else the CUDA tests only.
    stage "fallback: tests against libxmoe.a"
    mkdir -p "$WORK/fallback"
    cat >"$WORK/fallback/CMakeLists.txt" <<EOF
cmake_minimum_required(VERSION 3.18)
project(xmoe_fallback_tests CXX)
set(CMAKE_CXX_STANDARD $CXX_STD)
find_package(Torch REQUIRED)
find_package(GTest REQUIRED)
find_package(OpenMP REQUIRED)
file(GLOB all_tests $ROOT/tests/test_*.cpp)
foreach(t all_tests cuda_tests)
  if(t STREQUAL all_tests)
    add_executable(\${t} \${all_tests})
  else()
    add_executable(\${t} $ROOT/tests/test_main.cpp $ROOT/tests/test_cuda.cpp)
  endif()
  target_include_directories(\${t} PRIVATE $ROOT/include $DEPS/include)
  target_compile_definitions(\${t} PRIVATE XMOE_SOURCE_DIR="$ROOT" XMOE_CLI_PATH="$BUILD/xmoe")
  target_link_options(\${t} PRIVATE "SHELL:-Wl,--push-state,--no-as-needed -l:libstdc++.so.6 -Wl,--pop-state")
  target_link_libraries(\${t} PRIVATE $BUILD/libxmoe.a \${TORCH_LIBRARIES} GTest::gtest
    $DEPS/lib/libdnnl.so OpenMP::OpenMP_CXX dl)
endforeach()
EOF
    local extra=()
    if [ "$BUILD" = "$WORK/build-shim" ]; then extra=(-DTorch_DIR="$WORK/torchshim"); fi
    timeout "$(left)" cmake -S "$WORK/fallback" -B "$WORK/fallback/b" -G "$GEN" \
      -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$TORCH_PREFIX;$DEPS" \
      -DGTest_DIR="$DEPS/lib/cmake/GTest" "${extra[@]}" >"$WORK/fallback.log" 2>&1
    timeout "$(left)" cmake --build "$WORK/fallback/b" -j "$JOBS" -- $KEEP_GOING >>"$WORK/fallback.log" 2>&1
    grep -E "^FAILED|error:" "$WORK/fallback.log" | head -30
    if [ -x "$WORK/fallback/b/all_tests" ]; then
      TESTS=$WORK/fallback/b/all_tests
      record fallback "every test file built against libxmoe.a (no CLI)"
    elif [ -x "$WORK/fallback/b/cuda_tests" ]; then
      TESTS=$WORK/fallback/b/cuda_tests
      record fallback "only the CUDA tests built"
    else
      tail -30 "$WORK/fallback.log"
      record fallback FAILED
    fi
  fi

  if [ -x "$TESTS" ]; then
    echo "tests listed: $("$TESTS" --gtest_list_tests | grep -c '^  ')"
    run_tests cuda '*Cuda*'
    # Parameterised suites carry a prefix (Routers/FastPathEqualsReference...): hence the '*'.
    local focus='*TopK*:*Router*:*Dispatch*:*MoELayer*:*FastPath*:*GradCheck*:*Encoder*'
    focus+=':*BalanceLoss*:*ZLoss*:*SmoothLoad*:*CvSquared*:*Entropy*:*L2Normalize*:*NormalCdf*'
    focus+=':*SafetensorsTest*:*LayerConfig*:*TrainerTest*'
    run_tests focused "$focus-*Cuda*"
    run_tests rest "*-*Cuda*:$focus"
  else
    record tests "not run: no test binary"
  fi
  set +x
  echo
  echo "=== SUMMARY (t=${SECONDS}s)"
  for line in "${SUMMARY[@]}"; do echo "  $line"; done
}

main 2>&1 | tee -a "$LOG"; exit
