// JPEG decoding for the loader (implemented in jpeg_stb.cpp).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace fastprune {

// Decodes a baseline or progressive JPEG into 8-bit RGB. On success returns a malloc'd
// HxWx3 buffer (free it with free_decoded) and sets width/height; on failure returns nullptr
// and sets error to the decoder's reason.
uint8_t *decode_jpeg_rgb(const uint8_t *data, size_t size, int &width, int &height, std::string &error);
void free_decoded(uint8_t *pixels);

// Reads only the JPEG header: sets width/height and returns true when it parses. Lets a caller
// that knows the expected size reject a stream before the decoder allocates width*height*3
// bytes (a corrupted 600-byte payload can claim 20000x20000 pixels).
bool jpeg_dimensions(const uint8_t *data, size_t size, int &width, int &height);

}  // namespace fastprune
