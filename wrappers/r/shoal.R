# Shoal's R model wrapper: serves an R model over V2 REST (the Open Inference Protocol) with
# httpuv and jsonlite, for Shoal's `runtime: process` (or any V2 client). See README.md.
#
# Two ways to use it:
#
#   Rscript shoal.R model.rds     # a saved lm / glm / any object with a predict() method,
#                                 # or a saved function(inputs) -> outputs
#   Rscript shoal.R model.R       # an R file that calls shoal_serve(predict_fn, metadata)
#
# or, from an R file that sources this one: shoal_serve(function(inputs) ..., metadata).
#
# It serves on $PORT (default 8080) at $HOST (default 127.0.0.1) the model named
# $SHOAL_MODEL_NAME (version $SHOAL_MODEL_VERSION, default "1"):
#   GET  /v2/health/live, /v2/health/ready, /v2
#   GET  /v2/models/{name}[/versions/{v}]           metadata
#   GET  /v2/models/{name}[/versions/{v}]/ready
#   POST /v2/models/{name}[/versions/{v}]/infer     JSON tensors and the binary extension
# Errors are {"error": "..."}: 400 bad input (the wrapper's checks, shoal_abort(msg, 400), or
# one of R's errors for input of the wrong kind that the model raised on it: a factor's new
# level, a non-numeric argument...), 404 unknown model or route, 405 wrong method, 500 model
# failure (any other error the model raised, an output that cannot be sent), 503 not ready.

SHOAL_R_WRAPPER_VERSION <- "0.1.0"

.shoal_datatypes <- c(
  "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
  "FP16", "FP32", "FP64", "BYTES"
)
.shoal_itemsize <- c(
  BOOL = 1, UINT8 = 1, UINT16 = 2, UINT32 = 4, UINT64 = 8, INT8 = 1, INT16 = 2, INT32 = 4,
  INT64 = 8, FP16 = 2, FP32 = 4, FP64 = 8
)
# Integer ranges, as doubles (every bound is exact in a double except INT64's and UINT64's
# upper ones, whose checks are written as "< 2^63" and "< 2^64").
.shoal_int_min <- c(UINT8 = 0, UINT16 = 0, UINT32 = 0, UINT64 = 0, INT8 = -128, INT16 = -32768,
                    INT32 = -2^31, INT64 = -2^63)
.shoal_int_max <- c(UINT8 = 255, UINT16 = 65535, UINT32 = 2^32 - 1, UINT64 = 2^64,
                    INT8 = 127, INT16 = 32767, INT32 = 2^31 - 1, INT64 = 2^63)
# Datatypes that arrive in R as `integer` vectors; UINT32, INT64 and UINT64 arrive as doubles.
.shoal_r_integer <- c("UINT8", "UINT16", "INT8", "INT16", "INT32")
# Above these magnitudes not every integer is exact in the float datatype (2^(mantissa + 1)).
.shoal_float_exact <- c(FP16 = 2^11, FP32 = 2^24, FP64 = 2^53)

# -- the user's side -----------------------------------------------------------------------

#' An output with an explicit datatype and/or shape. `data` is a vector or an array (an array
#' is read in its own dimensions, row-major on the wire); `shape` reshapes it row-major.
shoal_tensor <- function(data, datatype = NULL, shape = NULL) {
  if (!is.null(datatype) && !(datatype %in% .shoal_datatypes)) {
    stop(sprintf("unknown datatype '%s'; expected one of %s", datatype,
                 paste(.shoal_datatypes, collapse = ", ")))
  }
  structure(list(data = data, datatype = datatype, shape = shape), class = "shoal_tensor")
}

#' Stop the request with an HTTP status of your choosing (a plain stop() is a 500, a model
#' failure): shoal_abort("the input has no rows", 400), shoal_abort("the database is down", 503).
shoal_abort <- function(message, status = 500L) {
  stop(structure(
    class = c("shoal_http_error", "error", "condition"),
    list(message = message, call = NULL, status = as.integer(status))
  ))
}

.http_error <- function(status, fmt, ...) {
  shoal_abort(sprintf(fmt, ...), status)
}

.log <- function(...) {
  message(sprintf("[shoal-r] %s", sprintf(...)))
}

# -- JSON in ------------------------------------------------------------------------------

.parse_json_object <- function(bytes, what) {
  if (any(bytes == as.raw(0))) {
    .http_error(400L, "%s is not valid JSON: it contains a NUL byte", what)
  }
  text <- rawToChar(bytes)
  Encoding(text) <- "UTF-8"
  if (!validUTF8(text)) .http_error(400L, "%s is not valid UTF-8", what)
  # jsonlite cuts a string at an escaped NUL (\u0000) without saying so; R strings cannot hold
  # one, so such a string is refused rather than passed on shortened.
  if (grepl("(^|[^\\\\])(\\\\\\\\)*\\\\u0000", text, perl = TRUE)) {
    .http_error(400L, "%s has a string with \\u0000, which R strings cannot hold", what)
  }
  value <- tryCatch(
    jsonlite::parse_json(text, simplifyVector = FALSE, bigint_as_char = TRUE),
    error = function(e) {
      reason <- gsub("\\s+", " ", trimws(strsplit(conditionMessage(e), "\n")[[1]][1]))
      .http_error(400L, "%s is not valid JSON: %s", what, reason)
    }
  )
  if (!.is_object(value)) .http_error(400L, "%s must be a JSON object", what)
  value
}

.is_object <- function(x) is.list(x) && !is.null(names(x))
.is_array <- function(x) is.list(x) && is.null(names(x))
.is_string <- function(x) is.character(x) && length(x) == 1L

.whole_number <- function(x) {
  (is.integer(x) || is.double(x)) && length(x) == 1L && is.finite(x) && x == floor(x)
}

.flatten <- function(data, name) {
  if (!is.list(data)) return(list(data))  # a scalar stands for a one-element tensor
  if (!is.null(names(data))) {
    .http_error(400L, "input '%s': data is a JSON object; it must be a list of values", name)
  }
  depth <- 0L
  repeat {
    nested <- vapply(data, is.list, NA)
    if (!any(nested)) break
    if (any(vapply(data[nested], function(e) !is.null(names(e)), NA))) {
      .http_error(400L, "input '%s': data holds a JSON object; it must be values or lists", name)
    }
    depth <- depth + 1L
    if (depth > 64L) .http_error(400L, "input '%s': data nests deeper than 64 levels", name)
    data <- unlist(lapply(data, function(e) if (is.list(e)) e else list(e)), recursive = FALSE)
  }
  data
}

# A bigint_as_char string: an integer literal jsonlite kept as text because a double would
# round it (beyond 2^53, within the INT64 range).
.big_integer <- function(s) grepl("^-?[0-9]+$", s)

# Exact decimal integer strings as doubles; NA where the double is not exactly that integer.
.exact_integer_strings <- function(s) {
  d <- as.numeric(s)
  d[sprintf("%.0f", d) != s & s != "-0"] <- NA_real_
  d
}

.nonfinite <- c("NaN" = NaN, "Infinity" = Inf, "-Infinity" = -Inf)

# JSON `data` (already flattened) as the R vector for `datatype`; 400 for anything the
# datatype cannot hold exactly.
.json_values <- function(flat, datatype, name) {
  n <- length(flat)
  if (datatype == "BYTES") {
    if (n && !all(vapply(flat, .is_string, NA))) {
      .http_error(400L, "input '%s': BYTES elements must be strings in JSON", name)
    }
    return(if (n) enc2utf8(unlist(flat, use.names = FALSE)) else character(0))
  }
  if (datatype == "BOOL") {
    if (n && !all(vapply(flat, function(e) is.logical(e) && length(e) == 1L, NA))) {
      .http_error(400L, "input '%s': BOOL data must be true or false", name)
    }
    return(if (n) unlist(flat, use.names = FALSE) else logical(0))
  }
  float <- startsWith(datatype, "FP")
  types <- vapply(flat, function(e) if (length(e) == 1L) typeof(e) else "none", "")
  values <- numeric(n)
  numbers <- types %in% c("integer", "double")
  values[numbers] <- as.numeric(unlist(flat[numbers], use.names = FALSE))
  texts <- types == "character"
  if (any(texts)) {
    s <- unlist(flat[texts], use.names = FALSE)
    parsed <- rep(NA_real_, length(s))
    big <- .big_integer(s)
    parsed[big] <- .exact_integer_strings(s[big])
    if (any(big & is.na(parsed))) {
      .http_error(400L, "input '%s': %s cannot be represented exactly as %s in R (a double)",
                  name, s[big & is.na(parsed)][1], datatype)
    }
    if (float) {
      special <- s %in% names(.nonfinite)
      parsed[special] <- .nonfinite[s[special]]
      big <- big | special
    }
    if (!all(big)) {
      shown <- s[!big][1]
      .http_error(400L, "input '%s': %s data must be numbers%s, not \"%s\"", name, datatype,
                  if (float) " (or \"NaN\", \"Infinity\", \"-Infinity\")" else "",
                  substr(shown, 1, 40))
    }
    values[texts] <- parsed
  }
  if (!all(numbers | texts)) {
    .http_error(400L, "input '%s': %s data must be %s", name, datatype,
                if (float) "numbers" else "integers")
  }
  # A literal beyond a double's range (1e999) reads as infinity.
  overflowed <- numbers & !is.finite(values)
  if (any(overflowed)) {
    .http_error(400L, "input '%s': a number is out of range for %s", name, datatype)
  }
  if (float) {
    # Integer literals must convert exactly (16777217 is no FP32); jsonlite gives them as
    # `integer` up to 2^31 and as text beyond 2^53, but as doubles in between, which are
    # then rounded to the nearest value like decimals.
    literal <- types == "integer"
    literal[texts] <- .big_integer(unlist(flat[texts], use.names = FALSE))
    return(.as_float(values, datatype, name, "input", 400L, exact = literal))
  }
  # jsonlite reads an integer literal from 2^63 up (or down to -2^63) as the nearest double,
  # which cannot be trusted to be what the client sent.
  beyond <- numbers & abs(values) >= 2^63
  if (any(beyond)) {
    .http_error(400L, paste0(
      "input '%s': %s is not exact: jsonlite reads integers from 2^63 up (and -2^63) as ",
      "doubles; send such %s values in the binary extension"), name,
      sprintf("%.0f", values[beyond][1]), datatype)
  }
  .as_integer_type(values, datatype, name, "input", 400L, r_integer = TRUE)
}

# Doubles as an integer datatype: whole, in range; with `r_integer`, an R `integer` vector for
# the datatypes that fit one (UINT32, INT64, UINT64 stay doubles).
.as_integer_type <- function(values, datatype, name, kind, status, r_integer = FALSE) {
  if (anyNA(values)) {
    .http_error(status, "%s '%s' has NA, which %s cannot carry", kind, name, datatype)
  }
  if (any(values != floor(values) | !is.finite(values))) {
    bad <- values[values != floor(values) | !is.finite(values)][1]
    .http_error(status, "%s '%s': %s is not an integer (%s)", kind, name, format(bad, digits = 17),
                datatype)
  }
  low <- .shoal_int_min[[datatype]]
  high <- .shoal_int_max[[datatype]]
  out <- values < low | (if (datatype %in% c("INT64", "UINT64")) values >= high else values > high)
  if (any(out)) {
    .http_error(status, "%s '%s': %s is out of range for %s", kind, name,
                sprintf("%.0f", values[out][1]), datatype)
  }
  if (r_integer && datatype %in% .shoal_r_integer) {
    if (datatype == "INT32" && any(values == -2^31)) {
      .http_error(status, paste0("%s '%s': INT32 -2147483648 is R's NA_integer_ and cannot be ",
                                 "passed on; send INT64 for it"), kind, name)
    }
    return(as.integer(values))
  }
  values
}

.f32 <- function(x) {
  if (!length(x)) return(numeric(0))
  readBin(writeBin(as.double(x), raw(), size = 4L, endian = "little"), "double",
          n = length(x), size = 4L, endian = "little")
}

.f16 <- function(x) .half_to_double(.double_to_half_bits(x))

# Doubles rounded to a float datatype: the nearest value, but a finite value beyond the
# type's range, or an integer (where `exact`) that would change, is refused.
.as_float <- function(values, datatype, name, kind, status, exact = FALSE) {
  if (!is.double(values)) values <- as.double(values)  # (as.double would copy a double too)
  if (anyNA(values)) values[is.na(values)] <- NaN
  if (datatype == "FP64") return(values)
  rounded <- if (datatype == "FP32") .f32(values) else .f16(values)
  overflow <- is.finite(values) & !is.finite(rounded)
  if (any(overflow)) {
    .http_error(status, "%s '%s': %s is out of range for %s", kind, name,
                format(values[overflow][1], digits = 17), datatype)
  }
  limit <- .shoal_float_exact[[datatype]]
  changed <- exact & is.finite(values) & abs(values) > limit & rounded != values
  if (any(changed)) {
    .http_error(status, "%s '%s': %s cannot be represented exactly as %s", kind, name,
                sprintf("%.0f", values[changed][1]), datatype)
  }
  rounded
}

# -- binary in ----------------------------------------------------------------------------

.half_to_double <- function(bits) {
  bits <- as.double(bits)
  sign <- ifelse(bits >= 32768, -1, 1)
  exponent <- (bits %/% 1024) %% 32
  mantissa <- bits %% 1024
  magnitude <- ifelse(exponent == 0, mantissa * 2^-24,
                      ifelse(exponent == 31, ifelse(mantissa == 0, Inf, NaN),
                             (1 + mantissa / 1024) * 2^(exponent - 15)))
  sign * magnitude
}

# IEEE half-precision bits of doubles, rounded to nearest even; beyond 65504 rounds to Inf.
.double_to_half_bits <- function(x) {
  x <- as.double(x)
  bits <- numeric(length(x))
  negative <- !is.na(x) & (x < 0 | (x == 0 & 1 / x < 0))
  a <- abs(x)
  finite <- is.finite(x)
  af <- a[finite]
  e <- floor(log2(af))
  e[af == 0] <- -14
  e <- e - (2^e > af) + (2^(e + 1) <= af)  # log2 rounding near powers of two
  e <- pmax(e, -14)
  quantum <- 2^(e - 10)
  r <- round(af / quantum) * quantum  # R rounds halves to even
  normal <- r >= 2^-14
  e2 <- floor(log2(pmax(r, 2^-14)))
  e2 <- e2 - (2^e2 > r & normal) + (2^(e2 + 1) <= r)
  field <- ifelse(normal, (e2 + 15) * 1024 + (r / 2^e2 - 1) * 1024, r / 2^-24)
  field[r > 65504] <- 31 * 1024  # overflow: infinity
  bits[finite] <- field
  bits[is.infinite(x)] <- 31 * 1024
  bits[is.na(x)] <- 31 * 1024 + 512  # NaN
  bits + ifelse(negative, 32768, 0)
}

.read_words <- function(bytes, count, words) {
  # Little-endian unsigned 16-bit words, `words` per element, as a count x words matrix.
  w <- readBin(bytes, "integer", n = count * words, size = 2L, signed = FALSE, endian = "little")
  matrix(as.double(w), nrow = count, ncol = words, byrow = TRUE)
}

# One input's binary section as its R vector. `bytes` is the section (a raw vector), or a
# connection at its start with `nbytes` of it left: numbers are read from it by readBin
# directly, so the section's bytes are never held beside the values.
.binary_values <- function(bytes, datatype, shape, name, nbytes = length(bytes)) {
  count <- prod(shape)
  if (datatype == "BYTES") {
    if (!is.raw(bytes)) bytes <- if (nbytes > 0) readBin(bytes, raw(), nbytes) else raw(0)
    return(.binary_bytes(bytes, count, name))
  }
  size <- .shoal_itemsize[[datatype]]
  if (nbytes != count * size) {
    .http_error(400L, paste0("input '%s': %.0f bytes of %s data do not match shape [%s], which ",
                             "needs %.0f bytes"), name, nbytes, datatype,
                paste(shape, collapse = ", "), count * size)
  }
  if (count == 0) return(.empty(datatype))
  switch(datatype,
    BOOL = readBin(bytes, "integer", n = count, size = 1L, signed = FALSE) != 0L,
    INT8 = readBin(bytes, "integer", n = count, size = 1L, signed = TRUE),
    UINT8 = readBin(bytes, "integer", n = count, size = 1L, signed = FALSE),
    INT16 = readBin(bytes, "integer", n = count, size = 2L, signed = TRUE, endian = "little"),
    UINT16 = readBin(bytes, "integer", n = count, size = 2L, signed = FALSE, endian = "little"),
    INT32 = {
      v <- readBin(bytes, "integer", n = count, size = 4L, endian = "little")
      if (anyNA(v)) {
        .http_error(400L, paste0("input '%s': INT32 -2147483648 is R's NA_integer_ and cannot ",
                                 "be passed on; send INT64 for it"), name)
      }
      v
    },
    UINT32 = { w <- .read_words(bytes, count, 2L); w[, 1] + w[, 2] * 65536 },
    INT64 = , UINT64 = {
      w <- .read_words(bytes, count, 4L)
      low <- w[, 1] + w[, 2] * 65536
      high <- w[, 3] + w[, 4] * 65536
      if (datatype == "INT64") high <- ifelse(high >= 2^31, high - 2^32, high)
      v <- high * 2^32 + low
      inexact <- (v - high * 2^32) != low
      if (any(inexact)) {
        i <- which(inexact)[1]
        .http_error(400L, "input '%s': %s %s cannot be represented exactly in R (a double)",
                    name, datatype, .int64_text(high[i], low[i]))
      }
      v
    },
    FP16 = .half_to_double(readBin(bytes, "integer", n = count, size = 2L, signed = FALSE,
                                   endian = "little")),
    FP32 = readBin(bytes, "double", n = count, size = 4L, endian = "little"),
    FP64 = readBin(bytes, "double", n = count, size = 8L, endian = "little")
  )
}

# The exact decimal text of high * 2^32 + low (for error messages only), without doubles.
.int64_text <- function(high, low) {
  negative <- high < 0
  if (negative) {
    # two's complement: -(2^64 - (high * 2^32 + low))
    low <- 2^32 - low
    high <- -high - 1
    if (low == 2^32) { low <- 0; high <- high + 1 }
  }
  digits <- integer(0)
  words <- c(high %/% 65536, high %% 65536, low %/% 65536, low %% 65536)
  while (any(words > 0)) {
    remainder <- 0
    for (i in seq_along(words)) {
      current <- remainder * 65536 + words[i]
      words[i] <- current %/% 10
      remainder <- current %% 10
    }
    digits <- c(remainder, digits)
  }
  paste0(if (negative) "-" else "", if (length(digits)) paste(digits, collapse = "") else "0")
}

.binary_bytes <- function(bytes, count, name) {
  size <- length(bytes)
  if (count * 4 > size) {
    .http_error(400L, paste0("input '%s': shape needs %.0f BYTES elements, but the %d bytes of ",
                             "data hold at most %d"), name, count, size, size %/% 4)
  }
  out <- character(count)
  offset <- 0
  for (i in seq_len(count)) {
    if (offset + 4 > size) {
      .http_error(400L, "input '%s': BYTES data ends after %d of %.0f elements", name, i - 1, count)
    }
    w <- readBin(bytes[(offset + 1):(offset + 4)], "integer", n = 2L, size = 2L, signed = FALSE,
                 endian = "little")
    length <- w[1] + w[2] * 65536
    offset <- offset + 4
    if (offset + length > size) {
      .http_error(400L, "input '%s': BYTES element %d claims %.0f bytes but only %.0f remain",
                  name, i - 1, length, size - offset)
    }
    element <- if (length > 0) bytes[(offset + 1):(offset + length)] else raw(0)
    if (any(element == as.raw(0))) {
      .http_error(400L, "input '%s': BYTES element %d has a NUL byte, which R strings cannot hold",
                  name, i - 1)
    }
    text <- rawToChar(element)
    Encoding(text) <- if (validUTF8(text)) "UTF-8" else "bytes"
    out[i] <- text
    offset <- offset + length
  }
  if (offset != size) {
    .http_error(400L, "input '%s': %.0f bytes left over after %.0f BYTES elements", name,
                size - offset, count)
  }
  out
}

.empty <- function(datatype) {
  if (datatype == "BOOL") return(logical(0))
  if (datatype == "BYTES") return(character(0))
  if (datatype %in% .shoal_r_integer) return(integer(0))
  numeric(0)
}

# A flat, row-major vector in R's shape: a vector for ranks 0 and 1, else an array with
# dim = shape (element [i, j] of a [n, k] tensor is x[i, j]).
.to_r <- function(flat, shape, datatype) {
  if (length(shape) < 2L && identical(attr(flat, "datatype"), datatype)) {
    return(flat)  # already tagged when decoded: no copy
  }
  value <- if (length(shape) >= 2L) {
    aperm(array(flat, dim = rev(shape)))
  } else {
    flat
  }
  attr(value, "datatype") <- datatype
  value
}

# -- a request ----------------------------------------------------------------------------

.parse_shape <- function(value, name, kind = "input") {
  ok <- .is_array(value) && all(vapply(value, function(d) .whole_number(d) && d >= 0, NA))
  if (!ok) .http_error(400L, "%s '%s': 'shape' must be a list of non-negative integers", kind, name)
  as.numeric(unlist(value, use.names = FALSE))
}

.parameters <- function(value, where) {
  if (is.null(value)) return(list())
  if (!is.list(value) || (length(value) && is.null(names(value)))) {
    .http_error(400L, "%s 'parameters' must be a JSON object", where)
  }
  value
}

# The request body, read front to back: `read(k)` gives its next k bytes (fewer where it ends
# early), `conn` is a connection at the same place for readBin to read numbers from directly,
# `length` is the body's size. `input` is httpuv's rook.input with the request's
# Content-Length, or a raw vector. The body is never copied whole nor sliced by index vectors
# (which cost 4 or 8 bytes a byte): a binary request's header and each input's section are
# read in turn, its numbers straight into their R vector.
.body_reader <- function(input, length = NULL) {
  if (!is.raw(input)) {
    n <- if (is.null(length)) NA_real_ else suppressWarnings(as.numeric(length))
    if (!is.na(n) && n >= 0 && n == floor(n)) {
      # httpuv's InputStream reads from a connection it keeps to itself: read numbers from it
      # directly when it is there to be found, else section by section through read().
      conn <- tryCatch(get("private", envir = input$.__enclos_env__)$conn,
                       error = function(e) NULL)
      if (!inherits(conn, "connection")) conn <- NULL
      return(list(length = n, conn = conn, close = function() NULL,
                  read = function(k) if (k > 0) input$read(k) else raw(0)))
    }
    input <- input$read()  # no usable Content-Length: read it whole
  }
  conn <- rawConnection(input)
  list(length = length(input), conn = conn, close = function() close(conn),
       read = function(k) if (k > 0) readBin(conn, raw(), k) else raw(0))
}

.decode_request <- function(reader, header_length) {
  if (is.raw(reader)) {
    reader <- .body_reader(reader)
    on.exit(reader$close())
  }
  total <- reader$length
  binary_size <- NULL  # bytes of binary data after the JSON header, if there is a header
  if (!is.null(header_length) && nzchar(header_length)) {
    n <- suppressWarnings(as.numeric(header_length))
    if (is.na(n) || n != floor(n) || n < 0 || n > total) {
      .http_error(400L, "Inference-Header-Content-Length is %s but the body has only %.0f bytes",
                  header_length, total)
    }
    header <- .parse_json_object(reader$read(n), "JSON header")
    binary_size <- total - n
  } else {
    header <- .parse_json_object(reader$read(total), "request body")
  }
  raw_inputs <- header[["inputs"]]
  if (!.is_array(raw_inputs)) .http_error(400L, "'inputs' must be a list of tensors")
  offset <- 0
  inputs <- list()
  for (position in seq_along(raw_inputs)) {
    raw <- raw_inputs[[position]]
    if (!.is_object(raw)) .http_error(400L, "input %d must be a JSON object", position - 1L)
    name <- raw[["name"]]
    if (!.is_string(name) || !nzchar(name)) {
      .http_error(400L, "input %d needs a non-empty string 'name'", position - 1L)
    }
    if (!is.null(inputs[[name]])) .http_error(400L, "input '%s' appears twice", name)
    datatype <- raw[["datatype"]]
    if (!.is_string(datatype)) .http_error(400L, "input '%s' needs a string 'datatype'", name)
    if (!(datatype %in% .shoal_datatypes)) {
      .http_error(400L, "input '%s': unknown datatype '%s'; expected one of %s", name, datatype,
                  paste(sort(.shoal_datatypes), collapse = ", "))
    }
    shape <- .parse_shape(raw[["shape"]], name)
    parameters <- .parameters(raw[["parameters"]], sprintf("input '%s'", name))
    size <- parameters[["binary_data_size"]]
    if (!is.null(size)) {
      if (is.null(binary_size)) {
        .http_error(400L, paste0("input '%s' has binary_data_size but the request has no ",
                                 "Inference-Header-Content-Length header"), name)
      }
      if (!.whole_number(size) || size < 0) {
        .http_error(400L, "input '%s': binary_data_size must be a non-negative integer", name)
      }
      if (offset + size > binary_size) {
        .http_error(400L, paste0("input '%s': binary_data_size %.0f overruns the %.0f bytes of ",
                                 "binary data left"), name, size, binary_size - offset)
      }
      # Only this input's section is read (the body is read front to back, section by section).
      if (!is.null(reader$conn) && datatype != "BYTES") {
        flat <- .binary_values(reader$conn, datatype, shape, name, size)
        if (length(flat) != prod(shape)) {
          .http_error(400L, "input '%s': the body ended inside its %.0f bytes of data", name, size)
        }
      } else {
        chunk <- reader$read(size)
        if (length(chunk) != size) {
          .http_error(400L, "input '%s': the body ended %.0f bytes into its %.0f bytes of data",
                      name, length(chunk), size)
        }
        flat <- .binary_values(chunk, datatype, shape, name)
        rm(chunk)
      }
      offset <- offset + size
    } else {
      if (!("data" %in% names(raw))) {
        .http_error(400L, "input '%s' has neither 'data' nor parameters.binary_data_size", name)
      }
      flat <- .json_values(.flatten(raw[["data"]], name), datatype, name)
      if (length(flat) != prod(shape)) {
        .http_error(400L, "input '%s': %d data elements do not match shape [%s] (%.0f elements)",
                    name, length(flat), paste(shape, collapse = ", "), prod(shape))
      }
    }
    attr(flat, "datatype") <- datatype  # tagged here, while nothing else holds it: no copy
    inputs[[name]] <- list(name = name, datatype = datatype, shape = shape, data = flat)
    rm(flat)
  }
  if (!is.null(binary_size) && offset != binary_size) {
    .http_error(400L, "the body has %.0f bytes of binary data that no input claims",
                binary_size - offset)
  }
  id <- header[["id"]]
  if (!is.null(id) && !.is_string(id)) .http_error(400L, "'id' must be a string")
  requested <- header[["outputs"]]
  if (!is.null(requested)) {
    if (!.is_array(requested)) .http_error(400L, "'outputs' must be a list")
    for (o in requested) {
      if (!.is_object(o) || !.is_string(o[["name"]])) {
        .http_error(400L, "each requested output needs a string 'name'")
      }
      .parameters(o[["parameters"]], "output")
    }
  }
  list(inputs = inputs, id = id, outputs = requested,
       parameters = .parameters(header[["parameters"]], "request"))
}

# -- outputs ------------------------------------------------------------------------------

.shape_text <- function(shape) paste0("[", paste(shape, collapse = ", "), "]")

# One output: its datatype, shape and flat row-major values, checked for its datatype.
.prepare_output <- function(name, value, declared) {
  datatype <- NULL
  shape <- NULL
  if (inherits(value, "shoal_tensor")) {
    datatype <- value$datatype
    shape <- value$shape
    value <- value$data
  }
  if (is.null(datatype)) datatype <- declared
  if (is.data.frame(value)) value <- as.matrix(value)
  if (is.factor(value)) value <- as.character(value)
  dims <- dim(value)
  if (is.list(value) && !all(vapply(value, is.raw, NA))) {
    .http_error(500L, paste0("output '%s' is a list; return vectors or arrays (a list only of ",
                             "raw vectors is BYTES)"), name)
  }
  if (is.null(value) || !(is.atomic(value) || is.list(value))) {
    .http_error(500L, "output '%s' is a %s, which has no V2 datatype", name, class(value)[1])
  }
  flat <- if (length(dims) >= 2L) aperm(value) else value
  if (is.list(flat)) {
    flat <- unname(as.list(flat))
  } else {
    flat <- as.vector(flat)
  }
  if (is.null(shape)) {
    shape <- if (length(dims) >= 2L) dims else length(flat)
  } else {
    shape <- as.numeric(shape)
    if (any(is.na(shape) | shape < 0 | shape != floor(shape)) || prod(shape) != length(flat)) {
      .http_error(500L, "output '%s': shape %s does not fit its %d values", name,
                  .shape_text(shape), length(flat))
    }
  }
  if (is.null(datatype)) {
    datatype <- switch(typeof(flat),
      logical = "BOOL", integer = "INT32", double = "FP64", character = "BYTES",
      raw = "UINT8", list = "BYTES",
      .http_error(500L, "output '%s' is of R type %s, which has no V2 datatype", name,
                  typeof(flat))
    )
  }
  list(name = name, datatype = datatype, shape = as.integer(shape),
       data = .check_output(flat, datatype, name))
}

.check_output <- function(flat, datatype, name) {
  if (is.raw(flat)) flat <- as.integer(flat)
  if (datatype == "BYTES") {
    if (is.list(flat)) return(flat)
    if (!is.character(flat)) {
      .http_error(500L, "output '%s' is BYTES but holds %s values, not strings", name, typeof(flat))
    }
    if (anyNA(flat)) .http_error(500L, "output '%s' has NA, which BYTES cannot carry", name)
    return(flat)
  }
  if (!(is.numeric(flat) || is.logical(flat))) {
    .http_error(500L, "output '%s' is %s but holds %s values", name, datatype, typeof(flat))
  }
  if (datatype == "BOOL") {
    if (anyNA(flat)) .http_error(500L, "output '%s' has NA, which BOOL cannot carry", name)
    if (is.numeric(flat) && !all(flat %in% c(0, 1))) {
      .http_error(500L, "output '%s' is BOOL but holds values other than 0 and 1", name)
    }
    return(as.logical(flat))
  }
  if (startsWith(datatype, "FP")) {
    return(.as_float(flat, datatype, name, "output", 500L, exact = is.integer(flat)))
  }
  .as_integer_type(as.double(flat), datatype, name, "output", 500L)
}

# The shortest of 15, 16 or 17 significant digits that reads back as the same double
# (jsonlite writes at most 15, which would change values); non-finite values as Shoal writes
# them: "NaN", "Infinity", "-Infinity".
.format_doubles <- function(x) {
  out <- sprintf("%.15g", x)
  for (digits in c(16L, 17L)) {
    redo <- is.finite(x) & as.numeric(out) != x
    if (!any(redo)) break
    out[redo] <- sprintf(paste0("%.", digits, "g"), x[redo])
  }
  out[!is.na(x) & x == 0 & 1 / x < 0] <- "-0.0"  # "-0" would read back as the integer 0
  out[is.nan(x) | is.na(x)] <- "\"NaN\""
  out[x == Inf & !is.na(x)] <- "\"Infinity\""
  out[x == -Inf & !is.na(x)] <- "\"-Infinity\""
  out
}

.json_data <- function(output) {
  v <- output$data
  datatype <- output$datatype
  text <- if (datatype == "BYTES") {
    text_ok <- TRUE
    if (is.list(v)) {  # raw elements: text only if they are UTF-8 without NUL bytes
      text_ok <- !any(vapply(v, function(e) any(e == as.raw(0)), NA))
      v <- if (text_ok) vapply(v, rawToChar, "", USE.NAMES = FALSE) else character(0)
      Encoding(v) <- "UTF-8"
    }
    v <- enc2utf8(v)  # latin1 or native strings become UTF-8; "bytes" ones stay as they are
    if (!text_ok || !all(validUTF8(v) & (Encoding(v) != "bytes" | !nzchar(v)))) {
      .http_error(400L, "BYTES output '%s' is not UTF-8 text; ask for it with binary_data",
                  output$name)
    }
    return(jsonlite::toJSON(v, auto_unbox = FALSE))
  } else if (datatype == "BOOL") {
    ifelse(v, "true", "false")
  } else if (startsWith(datatype, "FP")) {
    .format_doubles(v)
  } else {
    sprintf("%.0f", as.double(v))
  }
  structure(paste0("[", paste(text, collapse = ","), "]"), class = "json")
}

# Signed or unsigned integers (exact doubles) as little-endian two's complement words.
.int_words <- function(v, words) {
  a <- abs(v)
  w <- matrix(0, nrow = length(v), ncol = words)
  for (i in seq_len(words)) {
    w[, i] <- a %% 65536
    a <- (a - w[, i]) / 65536
  }
  negative <- v < 0
  if (any(negative)) {
    n <- w[negative, , drop = FALSE]
    n <- 65535 - n
    carry <- rep(1, nrow(n))
    for (i in seq_len(words)) {
      n[, i] <- n[, i] + carry
      carry <- as.numeric(n[, i] >= 65536)
      n[, i] <- n[, i] - carry * 65536
    }
    w[negative, ] <- n
  }
  writeBin(as.integer(t(w) - (t(w) >= 32768) * 65536), raw(), size = 2L, endian = "little")
}

.binary_data <- function(output) {
  v <- output$data
  switch(output$datatype,
    BOOL = as.raw(as.integer(v)),
    INT8 = , UINT8 = writeBin(as.integer(v), raw(), size = 1L),
    INT16 = , UINT16 = writeBin(as.integer(v), raw(), size = 2L, endian = "little"),
    INT32 = , UINT32 = .int_words(as.double(v), 2L),
    INT64 = , UINT64 = .int_words(as.double(v), 4L),
    FP16 = {
      bits <- .double_to_half_bits(v)
      writeBin(as.integer(bits - (bits >= 32768) * 65536), raw(), size = 2L, endian = "little")
    },
    FP32 = writeBin(as.double(v), raw(), size = 4L, endian = "little"),
    FP64 = writeBin(if (is.double(v)) v else as.double(v), raw(), size = 8L, endian = "little"),
    BYTES = {
      elements <- if (is.list(v)) v else lapply(v, function(s) charToRaw(enc2utf8(s)))
      unlist(lapply(elements, function(e) c(.int_words(length(e), 2L), e)), use.names = FALSE)
    }
  )
}

# -- the server ---------------------------------------------------------------------------

.check_metadata_tensors <- function(tensors, field) {
  if (is.null(tensors)) return(list())
  lapply(tensors, function(t) {
    if (!is.list(t) || !is.character(t$name) || !(t$datatype %in% .shoal_datatypes)) {
      stop(sprintf("metadata %s: each needs a name and a datatype (one of %s)", field,
                   paste(.shoal_datatypes, collapse = ", ")))
    }
    list(name = t$name, datatype = t$datatype,
         shape = as.integer(if (is.null(t$shape)) -1 else t$shape))
  })
}

.accepts <- function(spec_shape, shape) {
  length(spec_shape) == length(shape) && all(spec_shape == -1 | spec_shape == shape)
}

# Requests checked against the declared inputs, as Shoal checks them (no conversion here:
# Shoal converts datatypes before it forwards a request; a direct client sends the right one).
.conform <- function(inputs, specs, model) {
  if (!length(specs)) return(inputs)
  if (length(specs) == 1L && length(inputs) == 1L) {
    names(inputs) <- specs[[1]]$name
    inputs[[1]]$name <- specs[[1]]$name
  }
  by_name <- stats::setNames(specs, vapply(specs, function(s) s$name, ""))
  unknown <- setdiff(names(inputs), names(by_name))
  if (length(unknown)) {
    .http_error(400L, "model '%s' has no input '%s'; it expects %s", model, unknown[1],
                paste(names(by_name), collapse = ", "))
  }
  missing <- setdiff(names(by_name), names(inputs))
  if (length(missing)) {
    .http_error(400L, "model '%s' is missing input(s) %s", model, paste(missing, collapse = ", "))
  }
  for (tensor in inputs) {
    spec <- by_name[[tensor$name]]
    if (tensor$datatype != spec$datatype) {
      .http_error(400L, "input '%s' is %s but model '%s' expects %s", tensor$name,
                  tensor$datatype, model, spec$datatype)
    }
    if (!.accepts(spec$shape, tensor$shape)) {
      .http_error(400L, "input '%s' has shape %s but model '%s' expects %s (-1 is any size)",
                  tensor$name, .shape_text(tensor$shape), model, .shape_text(spec$shape))
    }
  }
  inputs
}

# Every answer closes its connection. httpuv writes a response's head and body in two writes
# and leaves Nagle's algorithm on, so on a kept-alive connection the body waits for the
# client's delayed ACK: 40 ms per request on Linux. A fresh loopback connection per request
# costs about 0.1 ms, and its first segments are acknowledged at once.
.respond <- function(status, body, headers = list("Content-Type" = "application/json")) {
  list(status = as.integer(status), headers = c(headers, list(Connection = "close")),
       body = body)
}

.json_bytes <- function(value) {
  charToRaw(enc2utf8(as.character(
    jsonlite::toJSON(value, auto_unbox = FALSE, json_verbatim = TRUE, digits = NA)
  )))
}

.json_response <- function(status, value) .respond(status, .json_bytes(value))

.error_response <- function(status, message) {
  .json_response(status, list(error = jsonlite::unbox(message)))
}

# -- which of predict_fn's errors are the input's fault ---------------------------------------

# R's own messages for an argument of the wrong kind or shape, or a value a fitted model has
# never seen: an error predict_fn raises with one of these is the input's fault (400). Each is
# (domain, message template); it is matched in English and in the session's language.
.shoal_input_errors <- list(
  c("R-stats", "factor %s has new level %s"),
  c("R-stats", "factor %s has new levels %s"),
  c("R-stats", "variable lengths differ (found for '%s')"),
  c("R", "non-numeric argument to binary operator"),
  c("R", "non-numeric argument to mathematical function"),
  c("R", "non-numeric argument to function"),
  c("R", "invalid argument to unary operator"),
  c("R", "non-conformable arguments"),
  c("R", "non-conformable arrays"),
  c("R", "invalid 'type' (%s) of argument"),
  c("R", "NA/NaN/Inf in '%s'"),
  c("R", "'x' must be numeric"),
  c("R", "argument is not a matrix")
)

.template_regex <- function(template) {
  parts <- strsplit(template, "%[sd]", perl = TRUE)[[1]]
  quoted <- gsub("([][{}()+*^$|\\\\?.])", "\\\\\\1", parts)
  tail <- if (grepl("%[sd]$", template)) ".*" else ""
  paste0("^", paste(quoted, collapse = ".*"), tail, "$")
}

.shoal_cache <- new.env()

# Is `e` (an error predict_fn raised) one R raises for bad input? Anything else (a missing
# package, "cannot allocate vector", a plain stop() in the model's code) is a model failure.
.is_input_error <- function(e) {
  regex <- .shoal_cache$input_error_regex
  if (is.null(regex)) {
    patterns <- unlist(lapply(.shoal_input_errors, function(t) {
      translated <- tryCatch(gettext(t[2], domain = t[1]), error = function(e) t[2])
      unique(c(t[2], translated))
    }))
    regex <- vapply(patterns, .template_regex, "", USE.NAMES = FALSE)
    .shoal_cache$input_error_regex <- regex
  }
  message <- conditionMessage(e)
  any(vapply(regex, function(r) grepl(r, message, perl = TRUE), NA))
}

# -- a test-only memory report ------------------------------------------------------------

# With SHOAL_R_REPORT_MEMORY=1 (for tests), each inference logs how far R's vector heap grew
# above what it held when the request began, at its peak: "request memory: peak +X bytes for
# a Y-byte answer". It costs two full garbage collections per request; leave it off.
.start_memory_report <- function() {
  if (!identical(Sys.getenv("SHOAL_R_REPORT_MEMORY"), "1")) return(NULL)
  before <- gc(reset = TRUE)
  before[2, 1]  # Vcells in use
}

.report_memory <- function(start, answer_bytes) {
  if (is.null(start)) return(invisible())
  after <- gc()
  .log("request memory: peak +%.0f bytes for a %.0f-byte answer", (after[2, 5] - start) * 8,
       answer_bytes)
}

#' The httpuv app (a list with `call`) that serves `predict_fn`; shoal_serve() runs it.
shoal_app <- function(predict_fn, metadata = list(), name = "model", version = "1",
                      ready = NULL) {
  stopifnot(is.function(predict_fn))
  inputs_spec <- .check_metadata_tensors(metadata$inputs, "inputs")
  outputs_spec <- .check_metadata_tensors(metadata$outputs, "outputs")
  output_types <- stats::setNames(
    lapply(outputs_spec, function(s) s$datatype),
    vapply(outputs_spec, function(s) s$name, "")
  )
  platform <- if (is.null(metadata$platform)) "r" else metadata$platform
  takes_parameters <- length(formals(predict_fn)) >= 2L ||
    "..." %in% names(formals(predict_fn))
  is_ready <- function() is.null(ready) || isTRUE(ready())
  unbox <- jsonlite::unbox

  tensor_json <- function(specs) {
    lapply(specs, function(s) list(name = unbox(s$name), datatype = unbox(s$datatype),
                                   shape = s$shape))
  }
  model_metadata <- list(
    name = unbox(name), versions = version, platform = unbox(platform),
    inputs = tensor_json(inputs_spec), outputs = tensor_json(outputs_spec)
  )

  infer <- function(req) {
    if (!is_ready()) .http_error(503L, "model '%s' is not ready", name)
    memory <- .start_memory_report()
    reader <- .body_reader(req$rook.input, req$CONTENT_LENGTH)
    on.exit(reader$close())
    request <- .decode_request(reader, req$HTTP_INFERENCE_HEADER_CONTENT_LENGTH)
    inputs <- .conform(request$inputs, inputs_spec, name)
    request$inputs <- NULL
    values <- lapply(inputs, function(t) .to_r(t$data, t$shape, t$datatype))
    rm(inputs)
    result <- withCallingHandlers(
      tryCatch(
        if (takes_parameters) predict_fn(values, request$parameters) else predict_fn(values),
        error = function(e) {
          if (inherits(e, "shoal_http_error")) stop(e)  # shoal_abort(): its own status
          if (.is_input_error(e)) {
            .http_error(400L, "model '%s' raised an error on this input: %s", name,
                        conditionMessage(e))
          }
          .log("model '%s' failed: %s", name, conditionMessage(e))
          .http_error(500L, "model '%s' failed: %s", name, conditionMessage(e))
        }
      ),
      warning = function(w) {
        .log("model '%s' warned: %s", name, conditionMessage(w))
        invokeRestart("muffleWarning")
      }
    )
    rm(values)  # what the outputs still hold stays; the rest can go before they are encoded
    # A named list (a data.frame too: one output per column) is the outputs; anything else
    # is the one output, named as the metadata's first output (else "output-0").
    if (!is.list(result) || inherits(result, "shoal_tensor")) {
      if (is.function(result) || is.environment(result) || is.null(result)) {
        .http_error(500L, "model '%s' returned a %s; it must return a named list of outputs",
                    name, class(result)[1])
      }
      first <- if (length(outputs_spec)) outputs_spec[[1]]$name else "output-0"
      result <- stats::setNames(list(result), first)
    }
    if (length(result) && (is.null(names(result)) || any(!nzchar(names(result))) ||
                           anyDuplicated(names(result)))) {
      .http_error(500L, "model '%s' returned outputs without (unique) names", name)
    }
    selected <- names(result)
    if (!is.null(request$outputs)) {
      selected <- vapply(request$outputs, function(o) o[["name"]], "")
      unknown <- setdiff(selected, names(result))
      if (length(unknown)) {
        .http_error(400L, "model '%s' has no output '%s'; it has %s", name, unknown[1],
                    paste(names(result), collapse = ", "))
      }
    }
    binary_default <- isTRUE(request$parameters[["binary_data_output"]])
    binary_choice <- list()
    for (o in request$outputs) {
      choice <- o[["parameters"]][["binary_data"]]
      if (!is.null(choice)) binary_choice[[o[["name"]]]] <- isTRUE(choice)
    }
    entries <- list()
    chunks <- list()
    for (output_name in selected) {
      output <- .prepare_output(output_name, result[[output_name]], output_types[[output_name]])
      entry <- list(name = unbox(output$name), datatype = unbox(output$datatype),
                    shape = output$shape)
      binary <- binary_choice[[output_name]]
      if (is.null(binary)) binary <- binary_default
      if (binary) {
        chunk <- .binary_data(output)
        entry$parameters <- list(binary_data_size = unbox(length(chunk)))
        chunks[[length(chunks) + 1L]] <- chunk
      } else {
        entry$data <- .json_data(output)
      }
      entries[[length(entries) + 1L]] <- entry
    }
    response <- list(model_name = unbox(name), model_version = unbox(version))
    if (!is.null(request$id)) response$id <- unbox(request$id)
    response$outputs <- entries
    header <- .json_bytes(response)
    if (!length(chunks)) {
      .report_memory(memory, length(header))
      return(.respond(200L, header))
    }
    body <- do.call(c, c(list(header), chunks))  # one copy of the binary data, not two
    rm(chunks)
    .report_memory(memory, length(body))
    .respond(200L, body,
             list("Content-Type" = "application/octet-stream",
                  "Inference-Header-Content-Length" = as.character(length(header))))
  }

  route <- function(req) {
    method <- req$REQUEST_METHOD
    path <- req$PATH_INFO
    want <- function(allowed) {
      if (!(method %in% allowed)) {
        .http_error(405L, "%s does not take %s (use %s)", path, method,
                    paste(allowed, collapse = ", "))
      }
    }
    if (path %in% c("/v2/health/live", "/v2/health/ready", "/v2", "/v2/")) {
      want("GET")
      if (path == "/v2/health/live") return(.json_response(200L, list(live = unbox(TRUE))))
      if (path == "/v2/health/ready") {
        if (!is_ready()) return(.error_response(503L, sprintf("model '%s' is not ready", name)))
        return(.json_response(200L, list(ready = unbox(TRUE))))
      }
      return(.json_response(200L, list(
        name = unbox("shoal-r"), version = unbox(SHOAL_R_WRAPPER_VERSION),
        extensions = c("binary_tensor_data")
      )))
    }
    parts <- regmatches(path, regexec("^/v2/models/([^/]+)(/versions/([^/]+))?(/(ready|infer))?$",
                                      path))[[1]]
    if (!length(parts)) .http_error(404L, "no route %s %s", method, path)
    asked <- utils::URLdecode(parts[2])
    asked_version <- utils::URLdecode(parts[4])
    action <- parts[6]
    if (asked != name) {
      .http_error(404L, "unknown model '%s' (this server serves '%s')", asked, name)
    }
    if (nzchar(asked_version) && asked_version != version) {
      .http_error(404L, "model '%s' has no version '%s' (it serves version %s)", name,
                  asked_version, version)
    }
    if (action == "infer") {
      want("POST")
      return(infer(req))
    }
    want("GET")
    if (action == "ready") {
      if (!is_ready()) return(.error_response(503L, sprintf("model '%s' is not ready", name)))
      return(.json_response(200L, list(name = unbox(name), ready = unbox(TRUE))))
    }
    .json_response(200L, model_metadata)
  }

  list(call = function(req) {
    tryCatch(route(req),
      shoal_http_error = function(e) .error_response(e$status, conditionMessage(e)),
      error = function(e) {
        .log("internal error: %s", conditionMessage(e))
        .error_response(500L, sprintf("the R wrapper failed: %s", conditionMessage(e)))
      }
    )
  })
}

#' Serve `predict_fn` (function(inputs) or function(inputs, parameters) -> named list of
#' outputs) until the process is stopped. `metadata`: list(inputs = list(list(name, datatype,
#' shape)), outputs = ..., platform = "r"), all optional. `ready`: an optional function that
#' says whether the model can serve now (a 503 while it says FALSE).
shoal_serve <- function(predict_fn, metadata = list(),
                        name = Sys.getenv("SHOAL_MODEL_NAME", "model"),
                        version = Sys.getenv("SHOAL_MODEL_VERSION", "1"),
                        host = Sys.getenv("HOST", "127.0.0.1"),
                        port = as.integer(Sys.getenv("PORT", "8080")),
                        ready = NULL) {
  if (!nzchar(name)) name <- "model"
  if (!nzchar(version)) version <- "1"
  if (is.na(port)) stop("$PORT must be a port number")
  app <- shoal_app(predict_fn, metadata, name = name, version = version, ready = ready)
  .log("serving model '%s' version %s on http://%s:%d (V2 REST)", name, version, host, port)
  httpuv::runServer(host, port, app)
}

# -- saved models ---------------------------------------------------------------------------

# The data variables a model's formula reads (the response left out), or NULL without one.
.model_variables <- function(object) {
  terms <- tryCatch(stats::terms(object), error = function(e) NULL)
  if (is.null(terms)) return(NULL)
  variables <- all.vars(stats::delete.response(terms))
  classes <- attr(terms, "dataClasses")
  kind <- vapply(variables, function(v) {
    class <- if (!is.null(classes) && v %in% names(classes)) classes[[v]] else "numeric"
    if (class %in% c("factor", "ordered", "character")) "BYTES"
    else if (class == "logical") "BOOL"
    else "FP64"
  }, "")
  stats::setNames(kind, variables)
}

# The data.frame predict() gets: the columns of one [n, k] tensor (a model whose variables are
# all numeric), or one [n] tensor per variable (BYTES for factors and strings, BOOL for
# logicals), named after the model's variables.
.frame_from_inputs <- function(inputs, variables, model) {
  columns <- names(variables)
  k <- length(columns)
  if (all(variables == "FP64") && length(inputs) == 1L) {
    x <- inputs[[1]]
    d <- dim(x)
    if (is.null(d) && k == 1L) d <- c(length(x), 1L)
    if (length(d) != 2L || d[2] != k) {
      .http_error(400L, "model '%s' takes one [n, %d] tensor whose columns are (%s)", model, k,
                  paste(columns, collapse = ", "))
    }
    frame <- as.data.frame(matrix(as.double(x), nrow = d[1], ncol = k), optional = TRUE)
    names(frame) <- columns
    return(frame)
  }
  missing <- setdiff(columns, names(inputs))
  if (length(missing)) {
    .http_error(400L, "model '%s' takes one tensor per variable (%s); %s is missing", model,
                paste(columns, collapse = ", "), missing[1])
  }
  frame <- lapply(columns, function(v) {
    x <- inputs[[v]]
    d <- dim(x)
    if (length(d) > 2L || (length(d) == 2L && d[2] != 1L)) {
      .http_error(400L, "input '%s' must be one column ([n] or [n, 1])", v)
    }
    as.vector(x)
  })
  as.data.frame(stats::setNames(frame, columns), stringsAsFactors = FALSE, optional = TRUE)
}

#' The predict function and metadata for a saved model object: the input tensor's columns (or
#' one tensor per variable) become a data.frame with the model's variable names, and the
#' output "predict" is predict(object, newdata = frame, type = type).
shoal_model <- function(object, type = Sys.getenv("SHOAL_R_PREDICT_TYPE", "response"),
                        name = Sys.getenv("SHOAL_MODEL_NAME", "model")) {
  if (is.function(object)) {
    return(list(predict_fn = object, metadata = attr(object, "shoal_metadata")))
  }
  has_predict <- any(vapply(class(object), function(c) {
    !is.null(utils::getS3method("predict", c, optional = TRUE))
  }, NA))
  if (!has_predict) {
    stop(sprintf(paste0("a %s has no predict() method; load the package that defines it ",
                        "with SHOAL_R_PACKAGES, or save a function(inputs) instead"),
                 class(object)[1]))
  }
  extra <- if (nzchar(type)) list(type = type) else list()
  variables <- .model_variables(object)
  if (is.null(variables)) {
    predict_fn <- function(inputs) {
      if (length(inputs) != 1L) .http_error(400L, "model '%s' takes one input tensor", name)
      list(predict = do.call(stats::predict, c(list(object, newdata = inputs[[1]]), extra)))
    }
    return(list(predict_fn = predict_fn, metadata = list(platform = "r")))
  }
  inputs <- if (all(variables == "FP64")) {
    list(list(name = "input", datatype = "FP64", shape = c(-1, length(variables))))
  } else {
    lapply(names(variables), function(v) list(name = v, datatype = variables[[v]], shape = -1))
  }
  predict_fn <- function(inputs) {
    frame <- .frame_from_inputs(inputs, variables, name)
    prediction <- do.call(stats::predict, c(list(object, newdata = frame), extra))
    if (is.list(prediction) && !is.data.frame(prediction) && !is.null(prediction$fit)) {
      prediction <- prediction$fit
    }
    if (is.null(dim(prediction))) prediction <- as.vector(prediction)
    list(predict = prediction)
  }
  multi <- inherits(object, "mlm")
  outputs <- list(list(name = "predict", datatype = "FP64", shape = if (multi) c(-1, -1) else -1))
  if (!inherits(object, "lm")) outputs <- list()  # lm and glm are known to give doubles
  list(predict_fn = predict_fn,
       metadata = list(platform = "r", inputs = inputs, outputs = outputs),
       variables = variables)
}

# -- the script entry point -----------------------------------------------------------------

shoal_main <- function(args = commandArgs(trailingOnly = TRUE)) {
  if (length(args) != 1L) {
    stop("usage: Rscript shoal.R model.rds   (a saved model or function)\n",
         "       Rscript shoal.R model.R     (an R file that calls shoal_serve())")
  }
  path <- args[1]
  packages <- strsplit(Sys.getenv("SHOAL_R_PACKAGES", ""), "[, ]+")[[1]]
  for (p in packages[nzchar(packages)]) {
    suppressPackageStartupMessages(library(p, character.only = TRUE))
  }
  if (!file.exists(path)) stop(sprintf("%s does not exist (in %s)", path, getwd()))
  if (grepl("\\.[rR]$", path)) {
    source(path, local = new.env(parent = globalenv()))
    stop(sprintf("%s returned without serving: it should end with shoal_serve(predict_fn)", path))
  }
  object <- readRDS(path)
  model <- shoal_model(object)
  if (!is.null(model$variables)) {
    .log("%s: a %s; input columns %s", path, class(object)[1],
         paste(names(model$variables), collapse = ", "))
  }
  shoal_serve(model$predict_fn, if (is.null(model$metadata)) list() else model$metadata)
}

if (sys.nframe() == 0L && !interactive()) {
  tryCatch(shoal_main(), error = function(e) {
    message("[shoal-r] error: ", conditionMessage(e))
    quit(status = 1L, save = "no")
  })
}
