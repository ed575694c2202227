#!/bin/bash
# Run the GPU checks on the lent H200 (the device tool; ../shared/GPU.md). Prepare once, here:
#   echo /.gpu/ >> .git/info/exclude; mkdir -p .gpu/fmnist .gpu/debs .gpu/pylib
#   cp /usr/share/datasets/fashion-mnist/*.gz .gpu/fmnist/
#   (cd .gpu/debs && apt-get download libjpeg62-turbo libjpeg62-turbo-dev)     # libjpeg-turbo 2.1.5
#   cp -r .venv/lib/python3.11/site-packages/{_pytest,pytest,pluggy,iniconfig,packaging,pygments,py.py,pytest_timeout.py,pytest_timeout-*.dist-info} .gpu/pylib/
#   mkdir -p .gpu/buildlib; cp -r .venv/lib/python3.11/site-packages/{nanobind,scikit_build_core,pathspec,packaging}* .gpu/buildlib/
# then: run with carry [".gpu"] and the command `bash benchmarks/gpu_device_run.sh` (about 5 min:
# build, the CUDA tests of the data path and of deferred updates, benchmarks/gpu.py). Knobs:
# GPU_SKIP_TESTS=1, GPU_THREADS="8 16", GPU_ARGS="--skip end_to_end --compile reduce-overhead" (or
# "--skip end_to_end --fit-threads 16 --fit-nice 0 10 --fit-first-round pooled alone": which part of
# fit's gap is loader threads competing with the launching thread, which the wait for each epoch's
# first batch? each row records data_wait_s; nice 10 and pooled are a CUDA loader's defaults),
# GPU_BENCH_S (gpu.py's time limit, default 330), GPU_PRODUCER_ORDER=1 (then, about 90 s:
# benchmarks/producer_order.py on the machine's 16 cores, the next-free rule vs batch k on producer
# k % threads, over gpu.py's photo store). Results land in $OUT/gpu.json and gpu.md.
REPO=$PWD
# The build backend: the machine's own (the H200 had it), else the carried copy (another machine's image may not)
python3 -c "import nanobind, scikit_build_core" 2>/dev/null || { echo "using the carried build backend"; \
  export PYTHONPATH=$REPO/.gpu/buildlib${PYTHONPATH:+:$PYTHONPATH}; }
J=/tmp/jt/usr; for f in .gpu/debs/*.deb; do dpkg -x "$f" /tmp/jt; done
export LD_LIBRARY_PATH=$J/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-} CMAKE_BUILD_PARALLEL_LEVEL=16 PYTHONUNBUFFERED=1
CXXFLAGS="-I$J/include/x86_64-linux-gnu" CMAKE_ARGS="-DCMAKE_DISABLE_FIND_PACKAGE_PkgConfig=ON \
 -DJPEG_INCLUDE_DIR=$J/include -DJPEG_LIBRARY=$J/lib/x86_64-linux-gnu/libjpeg.so \
 -DCMAKE_INSTALL_RPATH_USE_LINK_PATH=ON" \
 python3 -m pip install -q --no-build-isolation --no-deps --no-index . 2>&1 | tail -3
python3 -c "import fastprune, torch; print(fastprune.build_info(), torch.__version__, torch.version.cuda)"
if [ "${GPU_SKIP_TESTS:-0}" != 1 ]; then
  (export PYTHONPATH=$REPO/.gpu/pylib
   # pytest's own imports (pygments, py.py) must be carried too: without them no test ran (a
   # simulation of this script with torch 2.11 found it), and only the tail below would show it
   python3 -c "import pytest, pytest_timeout" || echo "GPU TESTS NOT RUN: pytest does not import from .gpu/pylib"
   timeout 100 python3 -m pytest -q -p no:cacheprovider -x tests/test_loader.py -k "cuda or normalize_on or pinned" 2>&1 | tail -4
   timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_prune_deferred.py tests/test_device.py 2>&1 | tail -4)
fi
cd /tmp && timeout "${GPU_BENCH_S:-330}" python3 "$REPO/benchmarks/gpu.py" --fmnist "$REPO/.gpu/fmnist" \
  --threads ${GPU_THREADS:-1 4 16} ${GPU_ARGS:-} --feed-batches 40 --workdir /tmp/gw --out "$OUT/gpu.json" 2>&1 \
  | grep -v Warning | tail -40
echo "gpu.py rc=${PIPESTATUS[0]}"
if [ "${GPU_PRODUCER_ORDER:-0}" = 1 ]; then
  timeout 150 python3 "$REPO/benchmarks/producer_order.py" --threads 16 --replay-threads 16 64 --repeats 4 \
    --photos 12800 --workdir /tmp/gw --out "$OUT/producer_order.json" 2>&1 | grep -v Warning | tail -12
fi
