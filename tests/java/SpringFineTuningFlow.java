// A Spring Boot service driving OpenAI's fine-tuning API on IMTS with RestTemplate (Debian's Spring
// and Jackson): upload a file (multipart), create a fine-tuning job, watch it, cancel another, and
// read OpenAI's error shape from a refused request. Usage: java SpringFineTuningFlow BASE_URL MODEL
// Exits non-zero with a message on the first thing that is not as the README says.

import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.PropertyNamingStrategies;
import com.fasterxml.jackson.databind.annotation.JsonNaming;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import org.springframework.core.io.ByteArrayResource;
import org.springframework.http.HttpEntity;
import org.springframework.http.HttpHeaders;
import org.springframework.http.MediaType;
import org.springframework.http.converter.FormHttpMessageConverter;
import org.springframework.http.converter.json.MappingJackson2HttpMessageConverter;
import org.springframework.util.LinkedMultiValueMap;
import org.springframework.util.MultiValueMap;
import org.springframework.web.client.HttpClientErrorException;
import org.springframework.web.client.RestTemplate;

public class SpringFineTuningFlow {

    @JsonNaming(PropertyNamingStrategies.SnakeCaseStrategy.class)
    public static class FileObject {
        public String id;
        public String object;
        public String purpose;
        public String status;
        public Long bytes;
    }

    @JsonNaming(PropertyNamingStrategies.SnakeCaseStrategy.class)
    public static class FineTuningJob {
        public String id;
        public String object;
        public String model;
        public String status;
        public String fineTunedModel;
        public String trainingFile;
        public Map<String, Object> hyperparameters;
        public Map<String, String> metadata;
    }

    @JsonNaming(PropertyNamingStrategies.SnakeCaseStrategy.class)
    public static class JobList {
        public String object;
        public List<FineTuningJob> data;
        public Boolean hasMore;
    }

    static final ObjectMapper MAPPER = new ObjectMapper().configure(DeserializationFeature.FAIL_ON_UNKNOWN_PROPERTIES, false);

    static void check(boolean ok, String what) {
        if (!ok) {
            System.err.println("FAILED: " + what);
            System.exit(1);
        }
        System.out.println("ok: " + what);
    }

    public static void main(String[] args) throws Exception {
        String v1 = args[0] + "/v1";
        String model = args[1];
        RestTemplate rest = new RestTemplate();
        rest.setMessageConverters(Arrays.asList(new FormHttpMessageConverter(), new MappingJackson2HttpMessageConverter(MAPPER)));

        StringBuilder rows = new StringBuilder();
        for (int i = 0; i < 8; i++) {
            rows.append("{\"messages\": [{\"role\": \"user\", \"content\": \"Add ").append(i).append(" and ").append(i)
                .append(".\"}, {\"role\": \"assistant\", \"content\": \"").append(2 * i).append("\"}]}\n");
        }
        ByteArrayResource file = new ByteArrayResource(rows.toString().getBytes(StandardCharsets.UTF_8)) {
            @Override
            public String getFilename() {
                return "spring.jsonl";
            }
        };
        MultiValueMap<String, Object> form = new LinkedMultiValueMap<>();
        form.add("file", file);
        form.add("purpose", "fine-tune");
        HttpHeaders multipart = new HttpHeaders();
        multipart.setContentType(MediaType.MULTIPART_FORM_DATA);
        FileObject uploaded = rest.postForObject(v1 + "/files", new HttpEntity<>(form, multipart), FileObject.class);
        check(uploaded.id.startsWith("file-") && "processed".equals(uploaded.status) && uploaded.bytes > 0,
              "a training file uploaded as multipart is processed");

        Map<String, Object> body = new HashMap<>();
        body.put("model", model);
        body.put("training_file", uploaded.id);
        body.put("suffix", "spring");
        body.put("metadata", Map.of("client", "spring"));
        body.put("hyperparameters", Map.of("n_epochs", 1));
        FineTuningJob job = rest.postForObject(v1 + "/fine_tuning/jobs", body, FineTuningJob.class);
        check("fine_tuning.job".equals(job.object) && job.id.startsWith("train_"), "a fine-tuning job is created");

        FineTuningJob done = null;
        for (int i = 0; i < 600; i++) {
            done = rest.getForObject(v1 + "/fine_tuning/jobs/{id}", FineTuningJob.class, job.id);
            if (Arrays.asList("succeeded", "failed", "cancelled").contains(done.status)) {
                break;
            }
            Thread.sleep(500);
        }
        check("succeeded".equals(done.status) && done.fineTunedModel.endsWith(":spring:" + job.id),
              "it is watched to succeeded, with its fine_tuned_model");

        body.put("hyperparameters", Map.of("n_epochs", 50));
        body.put("metadata", Map.of("client", "spring-cancel"));
        FineTuningJob other = rest.postForObject(v1 + "/fine_tuning/jobs", body, FineTuningJob.class);
        FineTuningJob cancelled = rest.postForObject(v1 + "/fine_tuning/jobs/{id}/cancel", null, FineTuningJob.class, other.id);
        check("cancelled".equals(cancelled.status), "another is cancelled");
        JobList listed = rest.getForObject(v1 + "/fine_tuning/jobs?metadata[client]={c}", JobList.class, "spring-cancel");
        check(listed.data.size() == 1 && other.id.equals(listed.data.get(0).id), "the list filters by metadata");

        body.put("hyperparameters", Map.of("n_epochs", 0));
        try {
            rest.postForObject(v1 + "/fine_tuning/jobs", body, String.class);
            check(false, "a bad hyperparameter is refused");
        } catch (HttpClientErrorException e) {
            JsonNode error = MAPPER.readTree(e.getResponseBodyAsString()).path("error");
            check(e.getStatusCode().value() == 400 && "hyperparameters.n_epochs".equals(error.path("param").asText())
                  && "invalid_request_error".equals(error.path("type").asText()),
                  "a bad hyperparameter is a 400 in OpenAI's shape naming it");
        }
        System.out.println("FINE-TUNING FLOW OK");
    }
}
