// Two teams' Spring Boot services on one IMTS, each with its own token (RestTemplate with an
// interceptor that sets the bearer token, as the README's Spring notes show). A team sees and acts
// on its own jobs only, reads its own usage, and gets the API's JSON errors as
// HttpClientErrorException bodies. Usage: java SpringTenantsFlow BASE_URL TEAM_A_TOKEN TEAM_B_TOKEN
// Exits non-zero with a message on the first thing that is not as the README says.

import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.PropertyNamingStrategies;
import com.fasterxml.jackson.databind.annotation.JsonNaming;
import java.util.Arrays;
import java.util.Collections;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import org.springframework.http.HttpStatus;
import org.springframework.http.client.ClientHttpRequestInterceptor;
import org.springframework.http.converter.json.MappingJackson2HttpMessageConverter;
import org.springframework.web.client.HttpClientErrorException;
import org.springframework.web.client.RestTemplate;

public class SpringTenantsFlow {

    // The guide's request DTO with the two fields a shared service adds (sent as camelCase).
    public static class TrainingJobRequest {
        public String modelName;
        public String dataset;
        public Double epochs;
        public Double learningRate = 1e-3;
        public String priority;
        public Boolean preemptible;
        public Map<String, Object> customConfig;
    }

    @JsonNaming(PropertyNamingStrategies.SnakeCaseStrategy.class)
    public static class JobStatusResponse {
        public String jobId;
        public String status;
        public String tenant;
        public String createdBy;
        public String priority;
        public Boolean preemptible;
        public Integer preemptions;
        public Double gpuSeconds;
        public Double cpuSeconds;
    }

    @JsonNaming(PropertyNamingStrategies.SnakeCaseStrategy.class)
    public static class JobListResponse {
        public Integer total;
        public List<JobStatusResponse> jobs;
    }

    @JsonNaming(PropertyNamingStrategies.SnakeCaseStrategy.class)
    public static class UsageRow {
        public String tenant;
        public String day;
        public Double gpuHours;
        public Double cpuHours;
        public Integer runs;
    }

    @JsonNaming(PropertyNamingStrategies.SnakeCaseStrategy.class)
    public static class UsageResponse {
        public List<UsageRow> tenants;
        public List<UsageRow> days;
    }

    static final ObjectMapper MAPPER = new ObjectMapper().configure(DeserializationFeature.FAIL_ON_UNKNOWN_PROPERTIES, false);

    static void check(boolean ok, String what) {
        if (!ok) {
            System.err.println("FAILED: " + what);
            System.exit(1);
        }
        System.out.println("ok: " + what);
    }

    static RestTemplate restTemplate(String token) {
        RestTemplate rest = new RestTemplate();
        rest.setMessageConverters(Collections.singletonList(new MappingJackson2HttpMessageConverter(MAPPER)));
        ClientHttpRequestInterceptor bearer = (request, body, execution) -> {
            request.getHeaders().set("Authorization", "Bearer " + token);
            return execution.execute(request, body);
        };
        rest.setInterceptors(Collections.singletonList(bearer));
        return rest;
    }

    /** The API's error body of a refused call: status, then the first error's field. */
    static String refusal(Runnable call) throws Exception {
        try {
            call.run();
        } catch (HttpClientErrorException e) {
            JsonNode body = MAPPER.readTree(e.getResponseBodyAsString());
            return e.getStatusCode().value() + " " + body.path("errors").path(0).path("field").asText();
        }
        return "not refused";
    }

    public static void main(String[] args) throws Exception {
        String api = args[0] + "/api/v1/training";
        RestTemplate teamA = restTemplate(args[1]);
        RestTemplate teamB = restTemplate(args[2]);

        TrainingJobRequest request = new TrainingJobRequest();
        request.modelName = "tiny-llama";
        request.dataset = "demo_sft";
        request.epochs = 1.0;
        request.priority = "high";
        request.preemptible = false;
        Map<String, Object> custom = new HashMap<>();
        custom.put("cutoff_len", 128);
        custom.put("logging_steps", 1);
        request.customConfig = custom;
        String id = teamA.postForObject(api + "/jobs", request, JobStatusResponse.class).jobId;
        JobStatusResponse job = teamA.getForObject(api + "/jobs/{id}", JobStatusResponse.class, id);
        check(id.startsWith("train_") && "team-a".equals(job.tenant) && "a-ci".equals(job.createdBy),
              "team A creates a job: it is team A's, made by its token's name");

        check(refusal(() -> teamB.getForObject(api + "/jobs/{id}", JobStatusResponse.class, id)).equals("404 job_id"),
              "team B asking for team A's job gets a 404, as for a job that does not exist");
        check(refusal(() -> teamB.postForObject(api + "/jobs/{id}/stop", null, String.class, id)).equals("404 job_id"),
              "team B cannot stop team A's job");
        JobListResponse theirs = teamB.getForObject(api + "/jobs", JobListResponse.class);
        check(theirs.jobs.stream().noneMatch(j -> j.jobId.equals(id)), "team B's list shows nothing of team A's");
        TrainingJobRequest urgent = new TrainingJobRequest();
        urgent.modelName = "tiny-llama";
        urgent.dataset = "demo_sft";
        urgent.priority = "high";
        check(refusal(() -> teamB.postForObject(api + "/jobs", urgent, String.class)).equals("403 priority"),
              "team B may not ask for priority high (its max_priority is normal)");

        JobStatusResponse done = null;
        for (int i = 0; i < 600; i++) {
            done = teamA.getForObject(api + "/jobs/{id}", JobStatusResponse.class, id);
            if (Arrays.asList("completed", "failed", "stopped").contains(done.status)) {
                break;
            }
            Thread.sleep(500);
        }
        check("completed".equals(done.status) && "high".equals(done.priority) && !done.preemptible
              && done.preemptions == 0 && done.cpuSeconds > 0 && done.gpuSeconds != null,
              "team A's job completes with its priority and its CPU seconds");

        UsageResponse mine = teamA.getForObject(api + "/usage", UsageResponse.class);
        check(mine.tenants.size() == 1 && "team-a".equals(mine.tenants.get(0).tenant)
              && mine.tenants.get(0).runs == 1 && mine.days.get(0).day != null,
              "team A reads its usage: one run, by day");
        UsageResponse notMine = teamB.getForObject(api + "/usage", UsageResponse.class);
        check(notMine.tenants.isEmpty(), "team B's usage has nothing of team A's");
        check(refusal(() -> teamB.getForObject(api + "/usage?tenant=team-a", String.class)).equals("403 tenant"),
              "team B may not read team A's usage");
        System.out.println("TENANTS FLOW OK");
    }
}
