// Batch gather / decode for the loader.
//
// ImageGather holds read-only views of a memory-mapped store (the whole file as bytes, plus
// each sample's byte range, mode and size for one image field), validated once when built, and
// a persistent thread pool. Each call assembles one batch of selected samples into a
// caller-owned uint8 [B, H, W, 3] buffer with the GIL released:
//   gather(ids, out)              raw copy / JPEG decode; every sample must already be HxW.
//   gather_crops(ids, crops, out) read or decode, crop (top, left, h, w), bilinear resize.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "core.hpp"
#include "jpeg_decode.hpp"
#include "thread_pool.hpp"

namespace fastprune {
namespace {

constexpr uint8_t MODE_JPEG = 0;  // ffcv's IMAGE_MODES: 'jpg' = 0, 'raw' = 1
constexpr uint8_t MODE_RAW = 1;

using Batch4D = nb::ndarray<uint8_t, nb::ndim<4>, nb::c_contig, nb::device::cpu>;
using Crops2D = nb::ndarray<const int32_t, nb::ndim<2>, nb::c_contig, nb::device::cpu>;

std::string sample_name(int64_t id) { return "sample " + std::to_string(id); }

// Decoded (or raw, borrowed) pixels of one sample; frees what it decoded.
struct Pixels {
    const uint8_t *data = nullptr;
    int height = 0, width = 0;
    uint8_t *owned = nullptr;
    Pixels() = default;
    Pixels(const Pixels &) = delete;
    ~Pixels() {
        if (owned) free_decoded(owned);
    }
};

// Bilinear resize of src[top:top+h, left:left+w] into dst (out_h x out_w x 3), sampling at pixel
// centres (the convention of cv2.INTER_LINEAR / PIL), clamped to the crop window.
void resize_crop(const uint8_t *src, int src_w, int top, int left, int h, int w, uint8_t *dst, int out_h, int out_w) {
    if (h == out_h && w == out_w) {  // pure crop: row copies
        for (int y = 0; y < out_h; ++y)
            std::memcpy(dst + size_t(y) * out_w * 3, src + (size_t(top + y) * src_w + left) * 3, size_t(out_w) * 3);
        return;
    }
    std::vector<int> x0(out_w), x1(out_w);
    std::vector<double> fx(out_w);
    for (int x = 0; x < out_w; ++x) {
        double sx = (x + 0.5) * w / out_w - 0.5;
        sx = std::min(std::max(sx, 0.0), double(w - 1));
        x0[x] = int(sx);
        x1[x] = std::min(x0[x] + 1, w - 1);
        fx[x] = sx - x0[x];
    }
    for (int y = 0; y < out_h; ++y) {
        double sy = (y + 0.5) * h / out_h - 0.5;
        sy = std::min(std::max(sy, 0.0), double(h - 1));
        int y0 = int(sy), y1 = std::min(y0 + 1, h - 1);
        double fy = sy - y0;
        const uint8_t *row0 = src + (size_t(top + y0) * src_w + left) * 3;
        const uint8_t *row1 = src + (size_t(top + y1) * src_w + left) * 3;
        uint8_t *out = dst + size_t(y) * out_w * 3;
        for (int x = 0; x < out_w; ++x) {
            for (int c = 0; c < 3; ++c) {
                double top_v = row0[x0[x] * 3 + c] * (1 - fx[x]) + row0[x1[x] * 3 + c] * fx[x];
                double bot_v = row1[x0[x] * 3 + c] * (1 - fx[x]) + row1[x1[x] * 3 + c] * fx[x];
                out[x * 3 + c] = uint8_t(top_v * (1 - fy) + bot_v * fy + 0.5);
            }
        }
    }
}

class ImageGather {
public:
    ImageGather(ROArray1D<uint8_t> buffer, ROArray1D<uint64_t> offsets, ROArray1D<uint64_t> sizes,
                ROArray1D<uint8_t> modes, ROArray1D<uint32_t> heights, ROArray1D<uint32_t> widths, size_t threads)
        : buffer_(buffer), offsets_(offsets), sizes_(sizes), modes_(modes), heights_(heights), widths_(widths),
          pool_(std::make_unique<ThreadPool>(threads == 0 ? 1 : threads)) {
        size_t n = offsets.shape(0);
        if (sizes.shape(0) != n || modes.shape(0) != n || heights.shape(0) != n || widths.shape(0) != n)
            fail_value("ImageGather: offsets, sizes, modes, heights and widths must have one entry per sample (got " +
                       std::to_string(n) + ", " + std::to_string(sizes.shape(0)) + ", " + std::to_string(modes.shape(0)) +
                       ", " + std::to_string(heights.shape(0)) + ", " + std::to_string(widths.shape(0)) + ")");
        for (size_t i = 0; i < n; ++i) validate_sample(i);
    }

    size_t num_samples() const { return offsets_.shape(0); }
    size_t threads() const { return pool_->size(); }

    void gather(ROArray1D<int64_t> ids, Batch4D out, size_t max_threads) {
        check_out(ids, out, "gather");
        const int out_h = int(out.shape(1)), out_w = int(out.shape(2));
        const size_t stride = size_t(out_h) * out_w * 3;
        const int64_t *id = ids.data();
        uint8_t *dst = out.data();
        nb::gil_scoped_release no_gil;
        run(ids.shape(0), max_threads, [&](size_t b) {
            int64_t s = checked_id(id[b], b);
            if (heights_.data()[s] != uint32_t(out_h) || widths_.data()[s] != uint32_t(out_w))
                fail_value("gather: " + sample_name(s) + " is " + std::to_string(heights_.data()[s]) + "x" +
                           std::to_string(widths_.data()[s]) + " but the batch is " + std::to_string(out_h) + "x" +
                           std::to_string(out_w) + "; all images of a batch must share a shape (use a resized crop "
                           "for datasets with several sizes)");
            if (modes_.data()[s] == MODE_RAW) {
                std::memcpy(dst + b * stride, buffer_.data() + offsets_.data()[s], stride);
            } else {
                Pixels px;
                decode(s, px);
                std::memcpy(dst + b * stride, px.data, stride);
            }
        });
    }

    void gather_crops(ROArray1D<int64_t> ids, Crops2D crops, Batch4D out, size_t max_threads) {
        check_out(ids, out, "gather_crops");
        if (crops.shape(0) != ids.shape(0) || crops.shape(1) != 4)
            fail_value("gather_crops: crops must be int32 [B, 4] (top, left, height, width) with B = len(ids) = " +
                       std::to_string(ids.shape(0)));
        const int out_h = int(out.shape(1)), out_w = int(out.shape(2));
        const size_t stride = size_t(out_h) * out_w * 3;
        const int64_t *id = ids.data();
        const int32_t *crop = crops.data();
        uint8_t *dst = out.data();
        nb::gil_scoped_release no_gil;
        run(ids.shape(0), max_threads, [&](size_t b) {
            int64_t s = checked_id(id[b], b);
            Pixels px;
            if (modes_.data()[s] == MODE_RAW) {
                px.data = buffer_.data() + offsets_.data()[s];
                px.height = int(heights_.data()[s]);
                px.width = int(widths_.data()[s]);
            } else {
                decode(s, px);
            }
            const int32_t *c = crop + b * 4;
            if (c[0] < 0 || c[1] < 0 || c[2] <= 0 || c[3] <= 0 || int64_t(c[0]) + c[2] > px.height ||
                int64_t(c[1]) + c[3] > px.width)
                fail_value("gather_crops: crop (top=" + std::to_string(c[0]) + ", left=" + std::to_string(c[1]) +
                           ", h=" + std::to_string(c[2]) + ", w=" + std::to_string(c[3]) + ") of batch row " +
                           std::to_string(b) + " is outside " + sample_name(s) + " (" + std::to_string(px.height) +
                           "x" + std::to_string(px.width) + ")");
            resize_crop(px.data, px.width, c[0], c[1], c[2], c[3], dst + b * stride, out_h, out_w);
        });
    }

private:
    // Every byte range must lie inside the file, and raw images must hold h*w*3 bytes: after
    // this check, the per-batch paths only need to check sample ids.
    void validate_sample(size_t i) const {
        uint64_t off = offsets_.data()[i], size = sizes_.data()[i], total = buffer_.shape(0);
        if (off > total || size > total - off)
            fail_index("ImageGather: " + sample_name(int64_t(i)) + " has byte range [" + std::to_string(off) + ", " +
                       std::to_string(off) + "+" + std::to_string(size) + ") outside the " + std::to_string(total) +
                       "-byte store");
        uint8_t mode = modes_.data()[i];
        uint64_t h = heights_.data()[i], w = widths_.data()[i];
        if (mode != MODE_RAW && mode != MODE_JPEG)
            fail_value("ImageGather: " + sample_name(int64_t(i)) + " has image mode " + std::to_string(mode) +
                       " (expected 0 = jpg or 1 = raw)");
        if (h == 0 || w == 0)
            fail_value("ImageGather: " + sample_name(int64_t(i)) + " has an empty image shape " + std::to_string(h) +
                       "x" + std::to_string(w));
        if (mode == MODE_RAW && size < h * w * 3)
            fail_value("ImageGather: raw " + sample_name(int64_t(i)) + " is " + std::to_string(h) + "x" +
                       std::to_string(w) + "x3 but its data holds only " + std::to_string(size) + " bytes");
    }

    int64_t checked_id(int64_t s, size_t row) const {
        if (s < 0 || uint64_t(s) >= num_samples())
            fail_index("sample id " + std::to_string(s) + " at batch row " + std::to_string(row) +
                       " is out of range for a store of " + std::to_string(num_samples()) + " samples");
        return s;
    }

    void check_out(const ROArray1D<int64_t> &ids, const Batch4D &out, const char *fn) const {
        if (out.shape(3) != 3)
            fail_value(std::string(fn) + ": out must be uint8 [B, H, W, 3], got last dimension " +
                       std::to_string(out.shape(3)));
        if (out.shape(0) < ids.shape(0))
            fail_value(std::string(fn) + ": out has room for " + std::to_string(out.shape(0)) + " images but ids has " +
                       std::to_string(ids.shape(0)));
    }

    void decode(int64_t s, Pixels &px) const {
        std::string error;
        const uint8_t *data = buffer_.data() + offsets_.data()[s];
        // Check the header's size first: a corrupted header must not make the decoder allocate
        // (and fill) an image far larger than the one the metadata describes.
        int header_w = 0, header_h = 0;
        if (!jpeg_dimensions(data, sizes_.data()[s], header_w, header_h))
            fail_value("JPEG decode of " + sample_name(s) + " failed: unreadable JPEG header");
        if (uint32_t(header_h) != heights_.data()[s] || uint32_t(header_w) != widths_.data()[s])
            fail_value("JPEG " + sample_name(s) + " decodes to " + std::to_string(header_h) + "x" +
                       std::to_string(header_w) + " but the store's metadata says " +
                       std::to_string(heights_.data()[s]) + "x" + std::to_string(widths_.data()[s]) +
                       " (read from its header, before decoding)");
        px.owned = decode_jpeg_rgb(data, sizes_.data()[s], px.width, px.height, error);
        if (!px.owned) fail_value("JPEG decode of " + sample_name(s) + " failed: " + error);
        px.data = px.owned;
        if (uint32_t(px.height) != heights_.data()[s] || uint32_t(px.width) != widths_.data()[s])
            fail_value("JPEG " + sample_name(s) + " decodes to " + std::to_string(px.height) + "x" +
                       std::to_string(px.width) + " but the store's metadata says " +
                       std::to_string(heights_.data()[s]) + "x" + std::to_string(widths_.data()[s]));
    }

    // One task per chunk of rows: few enough to keep pool overhead small, enough to balance.
    template <typename F>
    void run(size_t rows, size_t max_threads, F &&per_row) {
        size_t threads = max_threads == 0 ? pool_->size() : std::min(max_threads, pool_->size());
        size_t chunks = std::min(rows, threads * 4);
        if (chunks == 0) return;
        std::function<void(size_t)> task = [&](size_t c) {
            size_t begin = rows * c / chunks, end = rows * (c + 1) / chunks;
            for (size_t b = begin; b < end; ++b) per_row(b);
        };
        pool_->parallel_for(chunks, threads, task);
    }

    ROArray1D<uint8_t> buffer_;
    ROArray1D<uint64_t> offsets_, sizes_;
    ROArray1D<uint8_t> modes_;
    ROArray1D<uint32_t> heights_, widths_;
    std::unique_ptr<ThreadPool> pool_;
};

// One-off decode (tests, tools): JPEG bytes -> uint8 [H, W, 3] numpy array.
nb::ndarray<nb::numpy, uint8_t, nb::ndim<3>> decode_jpeg(ROArray1D<uint8_t> data) {
    std::string error;
    int w = 0, h = 0;
    uint8_t *pixels;
    {
        nb::gil_scoped_release no_gil;
        pixels = decode_jpeg_rgb(data.data(), data.shape(0), w, h, error);
    }
    if (!pixels) fail_value("decode_jpeg: " + error);
    nb::capsule owner(pixels, [](void *p) noexcept { free_decoded(static_cast<uint8_t *>(p)); });
    return nb::ndarray<nb::numpy, uint8_t, nb::ndim<3>>(pixels, {size_t(h), size_t(w), 3}, owner);
}

}  // namespace

void bind_loader(nb::module_ &m) {
    nb::class_<ImageGather>(m, "ImageGather",
                            "Assembles batches of one image field of a memory-mapped store (see csrc/gather.cpp).")
        .def(nb::init<ROArray1D<uint8_t>, ROArray1D<uint64_t>, ROArray1D<uint64_t>, ROArray1D<uint8_t>,
                      ROArray1D<uint32_t>, ROArray1D<uint32_t>, size_t>(),
             nb::arg("buffer"), nb::arg("offsets"), nb::arg("sizes"), nb::arg("modes"), nb::arg("heights"),
             nb::arg("widths"), nb::arg("threads") = 1)
        .def_prop_ro("num_samples", &ImageGather::num_samples)
        .def_prop_ro("threads", &ImageGather::threads)
        .def("gather", &ImageGather::gather, nb::arg("ids"), nb::arg("out"), nb::arg("max_threads") = 0,
             "Copy/decode samples ids into out[:len(ids)] (uint8 [B, H, W, 3]); all must be HxW.")
        .def("gather_crops", &ImageGather::gather_crops, nb::arg("ids"), nb::arg("crops"), nb::arg("out"),
             nb::arg("max_threads") = 0,
             "Read/decode samples ids, crop crops[b] = (top, left, h, w) and resize bilinearly into out[b].");
    m.def("decode_jpeg", &decode_jpeg, nb::arg("data"), "Decode JPEG bytes (uint8 1-D) to uint8 [H, W, 3] RGB.");
}

}  // namespace fastprune
