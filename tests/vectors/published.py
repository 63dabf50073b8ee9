"""Published known-answer vectors, typed from the documents that define them (never produced by
Tessera's code). tests/unit/test_primitives.py runs them through the primitives the core uses.

* HKDF-SHA256: RFC 5869, Appendix A, test cases 1-3 (A.1, A.2, A.3).
* AES-256-GCM: D. McGrew, J. Viega, "The Galois/Counter Mode of Operation (GCM)", revised
  submission to NIST, 2005, Appendix B, test cases 13-16 (the 256-bit-key cases; the same
  vectors as NIST's GCM validation examples).
* HMAC-SHA256: RFC 4231, section 4, test cases 1 and 2.
"""

X = bytes.fromhex

# RFC 5869 Appendix A: (name, IKM, salt, info, L, PRK, OKM)
HKDF_SHA256 = [
    ("A.1", X("0b" * 22), X("000102030405060708090a0b0c"), X("f0f1f2f3f4f5f6f7f8f9"), 42,
     X("077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5"),
     X("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")),
    ("A.2",
     X("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
       "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"
       "404142434445464748494a4b4c4d4e4f"),
     X("606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f"
       "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f"
       "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf"),
     X("b0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecf"
       "d0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8e9eaebecedeeef"
       "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff"),
     82,
     X("06a6b88c5853361a06104c9ceb35b45cef760014904671014a193f40c15fc244"),
     X("b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"
       "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71"
       "cc30c58179ec3e87c14c01d5c1f3434f1d87")),
    ("A.3", X("0b" * 22), b"", b"", 42,
     X("19ef24a32c717b167f33a91d6f648bdf96596776afdb6377ac434c1c293ccb04"),
     X("8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8")),
]

_K15 = X("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308")
_IV15 = X("cafebabefacedbaddecaf888")
_P15 = X("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
         "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255")
_C15 = X("522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
         "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad")

# McGrew & Viega, GCM spec, Appendix B: (name, K, IV, P, A, C, T)
AES256_GCM = [
    ("test case 13", bytes(32), bytes(12), b"", b"", b"", X("530f8afbc74536b9a963b4f1c4cb738b")),
    ("test case 14", bytes(32), bytes(12), bytes(16), b"", X("cea7403d4d606b6e074ec5d3baf39d18"),
     X("d0d1c8a799996bf0265b98b5d48ab919")),
    ("test case 15", _K15, _IV15, _P15, b"", _C15, X("b094dac5d93471bdec1a502270e3cc6c")),
    ("test case 16", _K15, _IV15, _P15[:60], X("feedfacedeadbeeffeedfacedeadbeefabaddad2"), _C15[:60],
     X("76fc6ece0f4e1768cddf8853bb2d551b")),
]

# RFC 4231 section 4: (name, key, data, HMAC-SHA-256)
HMAC_SHA256 = [
    ("4.2 test case 1", X("0b" * 20), b"Hi There",
     X("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7")),
    ("4.3 test case 2", b"Jefe", b"what do ya want for nothing?",
     X("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")),
]
