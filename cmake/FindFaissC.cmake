# FindFaissC: the FAISS C API that scripts/setup.sh builds from Debian's faiss
# source package into .deps/faiss_c, the libfaiss.a (libfaiss-dev) it wraps,
# and what that needs: BLAS + LAPACK, OpenMP and the C++ runtime.
# Defines the imported target FaissC::faiss_c (link it; it brings the rest).
#
#   LLOCO_FAISS_C_ROOT  folder holding include/faiss/c_api/ and lib/libfaiss_c.a
#                       (default: ${CMAKE_SOURCE_DIR}/.deps/faiss_c)
#   FAISS_LIBRARY       path of libfaiss.a (default: found in the system)

set(LLOCO_FAISS_C_ROOT "${CMAKE_SOURCE_DIR}/.deps/faiss_c" CACHE PATH
    "Folder with include/faiss/c_api/ and lib/libfaiss_c.a (scripts/setup.sh builds it)")

# Paths found under an earlier root must not survive a change of the root.
if(DEFINED _LLOCO_FAISS_C_ROOT_SEEN AND
   NOT _LLOCO_FAISS_C_ROOT_SEEN STREQUAL LLOCO_FAISS_C_ROOT)
  unset(FAISS_C_LIBRARY CACHE)
  unset(FAISS_C_INCLUDE_DIR CACHE)
endif()
set(_LLOCO_FAISS_C_ROOT_SEEN "${LLOCO_FAISS_C_ROOT}" CACHE INTERNAL "")

# Only the root: libfaiss-dev also installs the C headers in /usr/include, and
# they must come from the same place as the library.
find_library(FAISS_C_LIBRARY NAMES libfaiss_c.a faiss_c
             PATHS "${LLOCO_FAISS_C_ROOT}/lib" NO_DEFAULT_PATH)
find_path(FAISS_C_INCLUDE_DIR faiss/c_api/faiss_c.h
          PATHS "${LLOCO_FAISS_C_ROOT}/include" NO_DEFAULT_PATH)
if(NOT FAISS_C_LIBRARY OR NOT FAISS_C_INCLUDE_DIR)
  message(FATAL_ERROR
    "lloco: the FAISS C API was not found under LLOCO_FAISS_C_ROOT=${LLOCO_FAISS_C_ROOT} "
    "(expected lib/libfaiss_c.a and include/faiss/c_api/faiss_c.h). "
    "Debian's libfaiss-dev does not ship it compiled: run scripts/setup.sh, which "
    "builds it from Debian's faiss source package, or pass "
    "-DLLOCO_FAISS_C_ROOT=<folder> pointing at one built the same way.")
endif()

# libfaiss-dev ships only the static library.
find_library(FAISS_LIBRARY NAMES libfaiss.a faiss)
if(NOT FAISS_LIBRARY)
  message(FATAL_ERROR
    "lloco: libfaiss.a was not found: install Debian's libfaiss-dev "
    "(scripts/setup.sh does), or pass -DFAISS_LIBRARY=<path of libfaiss.a>.")
endif()

# What libfaiss.a calls: sgemm/ssyrk (BLAS), sgesvd/sgeqrf/dsyev/sgetrf...
# (LAPACK), GOMP_*/omp_* (OpenMP) and libstdc++ (the C++ linker brings it).
find_package(OpenMP REQUIRED COMPONENTS C CXX) # C: benchmarks set thread counts
find_package(BLAS REQUIRED)
find_package(LAPACK REQUIRED)

add_library(FaissC::faiss STATIC IMPORTED)
set_target_properties(FaissC::faiss PROPERTIES
  IMPORTED_LOCATION "${FAISS_LIBRARY}"
  IMPORTED_LINK_INTERFACE_LANGUAGES CXX
  INTERFACE_LINK_LIBRARIES "$<LINK_ONLY:OpenMP::OpenMP_CXX>;${LAPACK_LIBRARIES};${BLAS_LIBRARIES};m")

add_library(FaissC::faiss_c STATIC IMPORTED)
set_target_properties(FaissC::faiss_c PROPERTIES
  IMPORTED_LOCATION "${FAISS_C_LIBRARY}"
  IMPORTED_LINK_INTERFACE_LANGUAGES CXX
  INTERFACE_INCLUDE_DIRECTORIES "${FAISS_C_INCLUDE_DIR}"
  INTERFACE_LINK_LIBRARIES FaissC::faiss)

set(FaissC_FOUND TRUE)
message(STATUS "lloco: FAISS C API ${FAISS_C_LIBRARY}, FAISS ${FAISS_LIBRARY}, "
               "BLAS/LAPACK ${LAPACK_LIBRARIES}")
