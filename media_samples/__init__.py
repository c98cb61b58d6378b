"""Media made on the spot for the tests and the benchmarks (both import from here; nothing here imports tests/
or benchmarks/). factory: index videos whose frames show their own number, tones, images, speech, and the
probes that read them back. real_media: media as cameras, phones and browsers write them."""
